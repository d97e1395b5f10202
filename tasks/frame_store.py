"""Per-frame arrays of a whole video kept on local disk and read a block of rows at a time.

A video's geometry is a few arrays of (T, 478, 3) floats: 5.7 kB a frame each, half a gigabyte an
hour at 25 fps. Held in memory they made a dub's peak grow with the video's length (issue 18). A
``FrameStore`` keeps them in an unlinked temporary file and is read and written with ``pread`` /
``pwrite``: only the rows a stage asks for are in memory, and nothing of the file is mapped, so
the process's resident memory never holds what was read before (a memory map would keep every
page it touched resident and counted).

It reads like a read-only array (``shape``, ``len``, slicing, index arrays, boolean masks, a tuple
whose first element picks rows), so the stages that take a chunk of rows do not care which they
get. ``np.asarray(store)`` still gives the whole array, for short clips and offline tools.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, Iterator

import numpy as np

BLOCK_ROWS = 1024    # rows per read or write in the whole-array helpers: ~6 MB of meshes
_directory: str | None = None     # where new stores put their files (``use_directory``)


def use_directory(path: str | None) -> None:
    """Put the files of stores made from now on in ``path`` (``settings.spill_dir``; None: the
    system temp folder). Process-wide and idempotent, like ``tasks.malloc``: the stages that make
    stores (tracking, planning, QA) call it with their settings."""
    global _directory
    if path:
        os.makedirs(path, exist_ok=True)
    _directory = path or None


class FrameStore:
    """(T, *row_shape) array of ``dtype`` in an unlinked file of ``directory`` (default: the folder
    of ``use_directory``, else the system's temp folder); the file's space is given back when the
    store is closed or collected."""

    def __init__(self, n_rows: int, row_shape: tuple[int, ...], dtype: np.dtype | type = np.float32,
                 directory: str | None = None, fill: float | None = None):
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.n_rows = int(n_rows)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        fd, path = tempfile.mkstemp(prefix="resync-rows-", suffix=".bin", dir=directory or _directory)
        os.unlink(path)          # only our descriptor holds it: no file is left behind by a crash
        self._fd: int | None = fd
        os.ftruncate(fd, self.n_rows * self.row_bytes)   # sparse: reads of unwritten rows give zeros
        if fill is not None and fill != 0:
            for a in range(0, self.n_rows, BLOCK_ROWS):
                b = min(a + BLOCK_ROWS, self.n_rows)
                self.write(a, np.full((b - a, *self.row_shape), fill, self.dtype))

    @classmethod
    def of(cls, array: np.ndarray, directory: str | None = None) -> "FrameStore":
        """A store holding a copy of ``array`` (rows along its first axis)."""
        store = cls(len(array), array.shape[1:], array.dtype, directory)
        for a in range(0, len(array), BLOCK_ROWS):
            store.write(a, array[a:a + BLOCK_ROWS])
        return store

    # --- shape, like an array -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_rows, *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.row_bytes

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return f"FrameStore(shape={self.shape}, dtype={self.dtype})"

    def resize(self, n_rows: int) -> None:
        """Grow (or cut) to ``n_rows``; new rows read as zeros until written."""
        os.ftruncate(self._fileno(), int(n_rows) * self.row_bytes)
        self.n_rows = int(n_rows)

    # --- rows -------------------------------------------------------------------------------------
    def _fileno(self) -> int:
        if self._fd is None:
            raise ValueError("the frame store is closed")
        return self._fd

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows [a, b) as a new array."""
        a, b = max(0, int(a)), min(self.n_rows, int(b))
        out = np.empty((max(b - a, 0), *self.row_shape), self.dtype)
        if b > a:
            view, offset = memoryview(out.reshape(-1).view(np.uint8)), a * self.row_bytes
            while len(view):
                got = os.preadv(self._fileno(), [view], offset)
                if got <= 0:
                    raise OSError(f"short read from a frame store at byte {offset}")
                view, offset = view[got:], offset + got
        return out

    def write(self, a: int, rows: np.ndarray) -> None:
        """Overwrite rows [a, a + len(rows))."""
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.row_shape or a < 0 or a + len(rows) > self.n_rows:
            raise ValueError(f"rows of shape {rows.shape} at {a} do not fit {self.shape}")
        view, offset = memoryview(rows.reshape(-1).view(np.uint8)), a * self.row_bytes
        while len(view):
            view, offset = view[(got := os.pwrite(self._fileno(), view, offset)):], offset + got

    def rows(self, index) -> np.ndarray:
        """The rows an int, slice, integer array or boolean mask picks, as a new array. Indices in
        one ascending run are read with one call; scattered ones by their contiguous runs."""
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.n_rows if index < 0 else 0)
            if not 0 <= i < self.n_rows:
                raise IndexError(f"row {index} out of {self.n_rows}")
            return self.read(i, i + 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n_rows)
            if step == 1:
                return self.read(start, stop)
            index = np.arange(start, stop, step)
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (self.n_rows,):
                raise IndexError(f"boolean index of shape {idx.shape} for {self.n_rows} rows")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + self.n_rows, idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise IndexError(f"row index out of {self.n_rows}")
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        if not len(idx):
            return out
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        lo, hi = int(sorted_idx[0]), int(sorted_idx[-1]) + 1
        if hi - lo <= 2 * len(idx) + 64:       # dense: one read of the span
            out[order] = self.read(lo, hi)[sorted_idx - lo]
            return out
        breaks = np.flatnonzero(np.diff(sorted_idx) > 1) + 1
        for run, pos in zip(np.split(sorted_idx, breaks), np.split(order, breaks)):
            out[pos] = self.read(int(run[0]), int(run[-1]) + 1)[run - run[0]]
        return out

    def __getitem__(self, key):
        if key is Ellipsis or (isinstance(key, tuple) and (not key or key[0] is Ellipsis or key[0] is None)):
            return np.asarray(self)[key]          # no rows named first: the whole array (short clips, tools)
        if isinstance(key, tuple):
            rows = self.rows(key[0])
            rest = key[1:]
            return rows[rest] if isinstance(key[0], (int, np.integer)) else rows[(slice(None), *rest)]
        return self.rows(key)

    def __setitem__(self, key, value) -> None:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n_rows)
            if step == 1:
                self.write(start, np.broadcast_to(np.asarray(value, self.dtype), (stop - start, *self.row_shape)))
                return
            key = np.arange(start, stop, step)
        if isinstance(key, (int, np.integer)):
            self.write(int(key) + (self.n_rows if key < 0 else 0), np.asarray(value, self.dtype)[None])
            return
        idx = np.asarray(key)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        values = np.broadcast_to(np.asarray(value, self.dtype), (len(idx), *self.row_shape))
        if not len(idx):
            return
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        for run, part in zip(np.split(np.arange(len(idx)), breaks), np.split(values, breaks)):
            self.write(int(idx[run[0]]), part)

    def blocks(self, size: int = BLOCK_ROWS, reverse: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) a block at a time, from the first row on (or from the last, ``reverse``)."""
        starts = range(0, self.n_rows, size)
        for a in (reversed(starts) if reverse else starts):
            yield a, self.read(a, a + size)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole array in memory (short clips, offline tools; a long dub never asks for it)."""
        whole = self.read(0, self.n_rows)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __reduce__(self):
        """Pickled (a Ray task's result) as the plain array it holds."""
        return (np.asarray, (np.asarray(self),))

    # --- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):   # at interpreter shutdown ``os`` may be gone already
            self.close()


def per_block(fn: Callable[..., np.ndarray], *arrays, block: int = BLOCK_ROWS) -> np.ndarray:
    """``fn`` over rows [a, a + block) of every one of ``arrays`` (arrays or stores of one length),
    joined: a per-frame measure of a whole video with only a block of its rows in memory."""
    n = len(arrays[0])
    parts = [fn(*(x[a:a + block] for x in arrays)) for a in range(0, n, block)]
    return np.concatenate(parts) if parts else fn(*(x[0:0] for x in arrays))


__all__ = ["FrameStore", "BLOCK_ROWS", "per_block", "use_directory"]
