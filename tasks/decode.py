"""Video frames through decord, in chunks, upright, with their real timestamps.

Why chunks: a long video must never sit in memory whole; a chunk of 64 frames at 1080p is ~400 MB
of RGB at most. Why timestamps: variable-frame-rate phone footage is common, and the audio must be
matched to when a frame is shown, not to its index. Resampling to a constant rate happens only
when asked (``resample_fps``), by repeating or dropping source frames, never by interpolating.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import decord
import numpy as np

from catalogs.errors import ErrorClass, ResyncError
from catalogs.probe import VideoProbe, probe_video
from catalogs.storage import Storage, is_s3

DEFAULT_CHUNK = 64


@dataclass(frozen=True)
class Chunk:
    indices: np.ndarray      # output frame indices (int64)
    timestamps: np.ndarray   # presentation time of each frame, seconds
    frames: np.ndarray       # (n, H, W, 3) uint8 RGB, upright


@contextmanager
def local_path(storage: Storage, uri: str) -> Iterator[str]:
    """A local file for ``uri``: the path itself on disk, a temporary download from S3."""
    if not is_s3(uri):
        yield uri
        return
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(uri)[1] or ".bin", prefix="resync-")
    try:
        with os.fdopen(fd, "wb") as dst, storage.open(uri) as src:
            shutil.copyfileobj(src, dst, 8 << 20)
        yield tmp
    finally:
        os.unlink(tmp)


class VideoSource:
    """A decodable video: facts up front, then frames in chunks.

    Use as a context manager; opening probes the file, so bad media fails here with a typed error.
    """

    def __init__(self, storage: Storage, uri: str, resample_fps: float | None = None) -> None:
        self.storage, self.uri, self.resample_fps = storage, uri, resample_fps
        self._local = None
        self._reader: decord.VideoReader | None = None

    def __enter__(self) -> "VideoSource":
        self.probe: VideoProbe = probe_video(self.storage, self.uri)
        self._local = local_path(self.storage, self.uri)
        path = self._local.__enter__()
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
            n = len(self._reader)
            if n == 0:
                raise ResyncError(ErrorClass.DECODE_ERROR, "no frames", item=self.uri)
            self.source_timestamps = self._reader.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)
        except decord.DECORDError as e:
            self.__exit__(None, None, None)
            raise ResyncError(ErrorClass.DECODE_ERROR, f"decord cannot read it ({e})", item=self.uri) from e
        if self.resample_fps:
            duration = self.source_timestamps[-1] + 1.0 / max(self.probe.fps, 1e-6)
            self.timestamps = np.arange(int(round(duration * self.resample_fps))) / self.resample_fps
            src = np.searchsorted(self.source_timestamps, self.timestamps + 1e-6, side="right") - 1
            self._source_index = np.clip(src, 0, n - 1)
        else:
            self.timestamps = self.source_timestamps
            self._source_index = np.arange(n)
        return self

    def __exit__(self, *exc) -> None:
        self._reader = None
        if self._local is not None:
            self._local.__exit__(*exc) if exc and exc[0] else self._local.__exit__(None, None, None)
            self._local = None

    # --- facts ---------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return len(self.timestamps)

    @property
    def fps(self) -> float:
        """The constant output rate when resampling, else the average source rate."""
        return float(self.resample_fps or self.probe.fps)

    @property
    def is_vfr(self) -> bool:
        d = np.diff(self.source_timestamps)
        return bool(d.size and (d.max() - d.min()) > 0.25 / max(self.probe.fps, 1e-6))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed."""
        return self.probe.width, self.probe.height

    # --- frames --------------------------------------------------------------------------
    def chunks(self, chunk_size: int = DEFAULT_CHUNK, start: int = 0, stop: int | None = None) -> Iterator[Chunk]:
        """Frames ``start..stop`` in chunks of ``chunk_size``."""
        assert self._reader is not None, "use VideoSource as a context manager"
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        for lo in range(start, stop, chunk_size):
            idx = np.arange(lo, min(lo + chunk_size, stop))
            yield Chunk(idx, self.timestamps[idx], self._decode(self._source_index[idx]))

    def frame(self, index: int) -> np.ndarray:
        return next(self.chunks(1, index, index + 1)).frames[0]

    def _decode(self, source_idx: np.ndarray) -> np.ndarray:
        try:
            frames = self._reader.get_batch(source_idx.tolist()).asnumpy()
        except decord.DECORDError as e:
            raise ResyncError(ErrorClass.DECODE_ERROR, f"frames {source_idx[0]}..{source_idx[-1]} do not decode ({e})",
                              item=self.uri) from e
        # decord applies the display matrix itself (checked against FFmpeg's autorotation for 90,
        # 180 and 270 degrees); rotate here only if a build hands back the stored orientation.
        if self.probe.rotation in (90, 270) and frames.shape[1:3] != (self.probe.height, self.probe.width):
            frames = np.ascontiguousarray(np.rot90(frames, k=-(self.probe.rotation // 90), axes=(1, 2)))
        return frames
