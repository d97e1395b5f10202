"""The track artifact: written and read a row group at a time, the landmarks kept on disk."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks import track_artifact
from tasks.frame_store import BLOCK_ROWS, FrameStore
from tasks.landmarks import N_LANDMARKS
from tasks.track import FLAGS, TrackResult, TrackSummary


def synthetic_track(n: int) -> TrackResult:
    rng = np.random.default_rng(5)
    mesh = lambda: rng.normal(size=(n, N_LANDMARKS, 3)).astype(np.float32)  # noqa: E731
    raw = mesh()
    raw[10:20] = np.nan
    rot = np.tile(np.eye(3), (n, 1, 1)) + rng.normal(0, 0.01, (n, 3, 3))
    return TrackResult(
        video_uri="/x/v.mp4", fps=25.0, timestamps=np.arange(n) / 25.0, width=640, height=360, speaker_track=0,
        tracks=[TrackSummary(0, n - 10, 0.99, 120.0, 0.4)], shots=[(0, n // 2, 0), (n // 2, n, 0)],
        raw=FrameStore.of(raw), smoothed=mesh(), templates=rng.normal(size=(2, N_LANDMARKS, 3)).astype(np.float32),
        scale=rng.random(n), rotation=rot, translation=rng.normal(size=(n, 3)), euler=rng.normal(size=(n, 3)),
        displacements=mesh(), crop=rng.normal(size=(n, 2, 3)), face_px=rng.random(n) * 100,
        residual=rng.random(n), flags={f: rng.random(n) < 0.1 for f in FLAGS}, cut_frames=[n // 2],
        faces=[[(0, 1.0, 2.0, 3.0, 4.0)] if i % 3 else [] for i in range(n)], is_vfr=False, version="test-v1")


def assert_same(a: TrackResult, b: TrackResult) -> None:
    for name in ("raw", "smoothed", "displacements"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    for name in ("timestamps", "scale", "rotation", "translation", "crop"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("euler", "face_px", "residual"):       # kept as float32 in the file
        np.testing.assert_array_equal(getattr(a, name).astype(np.float32), getattr(b, name).astype(np.float32))
    for f in FLAGS:
        np.testing.assert_array_equal(a.flags[f], b.flags[f])
    assert a.faces == [[tuple(np.float32(v) if k else v for k, v in enumerate(f)) for f in fr] for fr in b.faces]
    assert (a.shots, a.cut_frames, a.version, a.tracks, a.speaker_track) == \
        (b.shots, b.cut_frames, b.version, b.tracks, b.speaker_track)


def test_an_artifact_round_trips_in_row_groups_with_its_landmarks_on_disk(tmp_path):
    n = 2 * BLOCK_ROWS + 37
    track = synthetic_track(n)
    storage = Storage(Settings(allowed_roots=[str(tmp_path)]))
    uri = str(tmp_path / "track.parquet")
    track_artifact.save(storage, track, uri, "sha")
    assert pq.ParquetFile(uri).metadata.num_row_groups == 3
    back = track_artifact.load(storage, uri)
    assert all(isinstance(getattr(back, m), FrameStore) for m in ("raw", "smoothed", "displacements"))
    assert_same(back, track)
    assert back.summary() == track.summary()


def test_an_artifact_written_as_one_row_group_still_loads(tmp_path):
    """Artifacts written before they were cut into row groups read the same."""
    track = synthetic_track(300)
    storage = Storage(Settings(allowed_roots=[str(tmp_path)]))
    uri = str(tmp_path / "old.parquet")
    table = track_artifact._rows_table(track, 0, 300).replace_schema_metadata(track_artifact._metadata(track, None))
    pq.write_table(table, uri, compression="zstd")
    assert_same(track_artifact.load(storage, uri), track)
