"""FrameStore: a video's per-frame arrays on disk, read like an array a block of rows at a time."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tasks.frame_store import FrameStore


@pytest.fixture
def array() -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3000, 478, 3)).astype(np.float32)
    a[7] = np.nan
    return a


def test_reads_pick_the_same_rows_as_the_array(array):
    store = FrameStore.of(array)
    assert store.shape == array.shape and len(store) == len(array) and store.dtype == np.float32
    rng = np.random.default_rng(1)
    keys = [5, -1, slice(10, 20), slice(None), slice(2990, 4000), slice(0, 100, 7), np.arange(100, 180),
            rng.integers(0, 3000, 50), np.array([2999, 0, 1500, 1500]), rng.random(3000) < 0.3,
            np.array([], np.int64), (slice(3, 9), 0, 0), (np.arange(4), slice(None), 2), (12, 5),
            (Ellipsis, 4, slice(0, 2)), Ellipsis]
    for key in keys:
        np.testing.assert_array_equal(store[key], array[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(store), array)
    assert [a for a, _ in store.blocks(1024)] == [0, 1024, 2048]
    assert [a for a, _ in store.blocks(1024, reverse=True)] == [2048, 1024, 0]


def test_writes_land_where_an_array_would_take_them(array):
    store = FrameStore(len(array), array.shape[1:], np.float32, fill=np.nan)
    assert np.isnan(store[2999]).all()
    copy = np.full_like(array, np.nan)
    for key, value in [(slice(0, 500), array[:500]), (np.arange(600, 700), array[600:700]), (800, array[800]),
                       (np.array([900, 901, 950, 951]), array[[900, 901, 950, 951]]), (slice(1000, 1010), 2.0)]:
        store[key] = value
        copy[key] = value
    np.testing.assert_array_equal(np.asarray(store), copy)
    with pytest.raises(ValueError):
        store.write(2999, array[:2])


def test_nothing_is_left_on_disk_and_a_pickle_is_the_plain_array(array, tmp_path):
    store = FrameStore.of(array[:100], directory=str(tmp_path))
    assert os.listdir(tmp_path) == []              # unlinked at once: a crash leaves no file behind
    back = pickle.loads(pickle.dumps(store))
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, array[:100])
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store[0]


def test_reading_a_block_does_not_grow_resident_memory():
    """Unlike a memory map, what was read is not kept resident: a pass over 240 MB of rows leaves
    the process about where it started."""
    store = FrameStore(20000, (478, 3), np.float64)
    for a in range(0, 20000, 1000):
        store.write(a, np.ones((1000, 478, 3)))

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    total = sum(float(rows[:, 0, 0].sum()) for _, rows in store.blocks(1024))
    assert total == 20000
    assert rss() - before < 60e6


def test_stores_go_where_the_spill_setting_says(tmp_path):
    """``settings.spill_dir`` (RESYNC_SPILL_DIR) picks the folder: a tmpfs /tmp would hold the
    arrays in memory again, so a deployment points it at a disk."""
    from tasks.frame_store import use_directory

    folder = tmp_path / "spill"
    use_directory(str(folder))
    try:
        store = FrameStore(10, (478, 3))
        where = os.readlink(f"/proc/self/fd/{store._fileno()}")
        assert where.startswith(str(folder)) and where.endswith("(deleted)")
    finally:
        use_directory(None)
    other = FrameStore(10, (478, 3))
    assert not os.readlink(f"/proc/self/fd/{other._fileno()}").startswith(str(folder))
