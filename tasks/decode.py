"""Video frames through PyAV (FFmpeg), streamed in chunks, upright, with their real timestamps.

Why streaming: a long video must never sit in memory whole. Frames are decoded in order, a chunk
at a time, and a chunk is capped in bytes as well as in frames (64 frames of 1080p would be 400 MB
of RGB). Why a size per reader: the tracker needs at most ~960 px and FFmpeg's scaler shrinks a
frame far faster than decoding it, so a stage asks for the size it needs (``max_side``) and only
the stages that paste into the frame decode it at full resolution. Why timestamps: variable-frame-
rate phone footage is common, and the audio must be matched to when a frame is shown, not to its
index. They are read from the packets (no decoding) when the video is opened. Resampling to a
constant rate happens only when asked (``resample_fps``), by repeating or dropping source frames,
never by interpolating.

PyAV replaced decord here (issue 18): decord decoded 1080p HEVC at a third of FFmpeg's one-thread
speed and its reader held up to 2 GB; both give the same pixels and the same presentation times
on every clip of ``../shared/data`` (the tests check frames against FFmpeg's own decode).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import av
import numpy as np

from catalogs.errors import ErrorClass, ResyncError
from catalogs.probe import VideoProbe, probe_video
from catalogs.settings import Settings
from catalogs.storage import Storage, is_s3

DEFAULT_CHUNK: int = Settings.model_fields["decode_chunk"].default            # one place: the settings' defaults
DEFAULT_CHUNK_MB: float = Settings.model_fields["decode_chunk_mb"].default
MAX_MISSING_AT_END = 2       # frames a decoder may leave out at the end before the file counts as broken


@dataclass(frozen=True)
class Chunk:
    indices: np.ndarray      # output frame indices (int64)
    timestamps: np.ndarray   # presentation time of each frame, seconds
    frames: np.ndarray       # (n, H, W, 3) uint8 RGB, upright


class FramePool:
    """Chunk buffers handed back for the next chunk to decode into.

    A 96-MB chunk allocated afresh on the decoding thread comes from new pages every time (glibc
    serves a non-main thread's blocks of that size with ``mmap``): at 1080p that is a page fault
    per 4 kB of every frame. A pipeline that knows when a chunk's frames are no longer read (the
    dub, once the encoder has taken them) returns the buffer here. Holds at most ``capacity``."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._free: deque[np.ndarray] = deque()
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            for k, buf in enumerate(self._free):
                if buf.shape == shape:
                    del self._free[k]
                    return buf
        return np.empty(shape, np.uint8)

    def put(self, buf: np.ndarray) -> None:
        """Hand back a buffer ``get`` gave out (whole, not a view), once nothing reads it."""
        with self._lock:
            if len(self._free) < self.capacity and buf.base is None:
                self._free.append(buf)


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


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk so the longer side is at most ``max_side`` (never enlarged), even."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def chunk_frames(width: int, height: int, chunk_size: int, chunk_mb: float = DEFAULT_CHUNK_MB) -> int:
    """Frames per chunk: ``chunk_size``, fewer where that many frames of this size exceed ``chunk_mb``."""
    per_frame = width * height * 3 / 2**20
    return max(1, min(chunk_size, int(chunk_mb // max(per_frame, 1e-9))))


class VideoSource:
    """A decodable video: facts up front, then frames in chunks.

    Use as a context manager; opening probes the file and reads its packet timestamps, so bad media
    fails here with a typed error. Every ``chunks`` call decodes with its own FFmpeg decoder, so
    several readers of one source (a frame for the reference, then the stream) never disturb
    each other.
    """

    def __init__(self, storage: Storage, uri: str, resample_fps: float | None = None, threads: int = 1) -> None:
        self.storage, self.uri, self.resample_fps, self.threads = storage, uri, resample_fps, threads
        self._local = None
        self._path: str | None = None

    def __enter__(self) -> "VideoSource":
        self.probe: VideoProbe = probe_video(self.storage, self.uri)
        self._local = local_path(self.storage, self.uri)
        self._path = self._local.__enter__()
        try:
            self._pts = self._packet_pts()
        except (av.FFmpegError, ResyncError) as e:
            self.__exit__(None, None, None)
            if isinstance(e, ResyncError):
                raise
            raise ResyncError(ErrorClass.DECODE_ERROR, f"FFmpeg cannot read its packets ({e})", item=self.uri) from e
        n = len(self._pts)
        self.source_timestamps = (self._pts - self._start) * self._time_base
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
        self._path = None
        if self._local is not None:
            self._local.__exit__(*exc) if exc and exc[0] else self._local.__exit__(None, None, None)
            self._local = None

    def _packet_pts(self) -> np.ndarray:
        """Sorted presentation times (stream ticks) of every frame, from the packets alone."""
        with av.open(self._path) as container:
            stream = container.streams.video[0]
            self._time_base = float(stream.time_base)
            pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
            start, declared = stream.start_time, int(stream.frames or 0)
        if not pts:
            raise ResyncError(ErrorClass.DECODE_ERROR, "no frames", item=self.uri)
        if declared and len(pts) < declared:      # the index lists frames whose data is not in the file
            raise ResyncError(ErrorClass.DECODE_ERROR, f"truncated: {len(pts)} of the {declared} frames its index "
                              "lists are in the file", item=self.uri)
        pts = np.unique(np.asarray(pts, np.int64))
        self._start = int(start) if start is not None else int(pts[0])
        return pts

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
    def chunks(self, chunk_size: int = DEFAULT_CHUNK, start: int = 0, stop: int | None = None,
               max_side: int | None = None, chunk_mb: float = DEFAULT_CHUNK_MB,
               buffers: FramePool | None = None) -> Iterator[Chunk]:
        """Frames ``start..stop`` in chunks of ``chunk_size`` (fewer for large frames: ``chunk_mb``),
        shrunk to ``max_side`` pixels on the longer side when given; decoded into ``buffers``' when given."""
        assert self._path is not None, "use VideoSource as a context manager"
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        if start >= stop:
            return
        w, h = scaled_size(*self.size, max_side)
        per_chunk = chunk_frames(w, h, chunk_size, chunk_mb)
        frames = self._source_frames(int(self._source_index[start]), max_side)
        try:
            src_index, image = next(frames)
            for lo in range(start, stop, per_chunk):
                idx = np.arange(lo, min(lo + per_chunk, stop))
                shape = (len(idx), h, w, 3)
                out = buffers.get(shape) if buffers is not None else np.empty(shape, np.uint8)
                for k, i in enumerate(idx):
                    want = int(self._source_index[i])
                    while src_index < want:
                        src_index, image = next(frames)
                    out[k] = image
                yield Chunk(idx, self.timestamps[idx], out)
        finally:
            frames.close()        # the decoder and its file close with the last chunk, or when the reader stops

    def frame(self, index: int, max_side: int | None = None) -> np.ndarray:
        """Frame ``index``, the pixels ``chunks`` gives for it. Decoded from the keyframe before it
        without the frames no other frame refers to (non-reference B-frames), which nothing after
        needs: the same pixels for about half the decoding. That counts for a dub's style reference
        in a long GOP (a 1080p HEVC phone clip decodes 130 frames instead of 248 for its frame 247)."""
        image = self._decode_one(int(self._source_index[index]), max_side)
        if image is None:     # not shown by the decoder (or broken): the stream's repeat rule or typed error
            image = next(self.chunks(1, index, index + 1, max_side)).frames[0]
        return image

    def _decode_one(self, source_index: int, max_side: int | None) -> np.ndarray | None:
        """Source frame ``source_index`` alone, skipping non-reference frames on the way; None when
        the decoder does not show it (a dropped or undecodable frame), left to ``chunks``."""
        target = int(self._pts[source_index])
        w, h = scaled_size(*self.size, max_side)
        size = (w, h) if self.probe.rotation in (0, 180) else (h, w)   # as stored, before rotation
        try:
            with av.open(self._path) as container:
                stream = container.streams.video[0]
                stream.thread_type, stream.thread_count = "SLICE", 1   # no frame threads to wind down after one frame
                context = stream.codec_context
                container.seek(target, stream=stream, backward=True, any_frame=False)
                for packet in container.demux(stream):
                    context.skip_frame = "DEFAULT" if packet.pts == target or packet.pts is None else "NONREF"
                    for frame in context.decode(packet):
                        if frame.pts is None or frame.pts > target:   # shown in order: it was not there
                            return None
                        if frame.pts == target:
                            return self._rgb(frame, size)
        except av.FFmpegError:
            return None
        return None

    def scale_of(self, max_side: int | None) -> tuple[float, float]:
        """(x, y) factors from the pixels of ``chunks(max_side=...)`` frames to the displayed frame's (>= 1)."""
        w, h = scaled_size(*self.size, max_side)
        return self.size[0] / w, self.size[1] / h

    def _source_frames(self, first: int, max_side: int | None) -> Iterator[tuple[int, np.ndarray]]:
        """(source index, upright RGB frame) from ``first`` on, each index once, in order. A frame the
        decoder skips repeats the one before it, so indices always line up with the timestamps; a
        stream that fails to decode, or ends more than ``MAX_MISSING_AT_END`` frames early, is a
        ``decode_error``."""
        n = len(self._pts)
        with av.open(self._path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if self.threads > 1 else "SLICE"
            stream.thread_count = max(1, self.threads)
            if first > 0:
                container.seek(int(self._pts[first]), stream=stream, backward=True, any_frame=False)
            w, h = scaled_size(*self.size, max_side)
            size = (w, h) if self.probe.rotation in (0, 180) else (h, w)   # as stored, before rotation
            expect, last = first, None
            try:
                for frame in container.decode(stream):
                    k = int(np.searchsorted(self._pts, frame.pts)) if frame.pts is not None else expect
                    if k < expect or k >= n:
                        continue
                    image = self._rgb(frame, size)
                    if last is None and k > expect:
                        last = image
                    while expect < k:            # frames the decoder dropped: repeat the one before
                        yield expect, last
                        expect += 1
                    yield k, image
                    last, expect = image, k + 1
            except av.FFmpegError as e:       # corrupt data: an error, never frozen frames in an output
                raise ResyncError(ErrorClass.DECODE_ERROR, f"frame {expect} does not decode ({e})",
                                  item=self.uri) from e
            if last is None or n - expect > MAX_MISSING_AT_END:
                raise ResyncError(ErrorClass.DECODE_ERROR, f"the stream ends after {expect} of its {n} frames",
                                  item=self.uri)
            while True:                # a decoder that drops the last frame or two: the last one repeats
                yield expect, last
                expect += 1

    def _rgb(self, frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
        """The frame as upright RGB at ``size``. swscale runs on this (the decoding) thread alone: by
        default it splits a frame over every core, which the other stages are using, and spends more
        CPU on it (a 1080p frame 3.9 against 3.7 ms, shrunk for tracking 2.6 against 2.2 ms); the
        pixels are the same."""
        if (frame.width, frame.height) == size:
            image = frame.to_ndarray(format="rgb24", threads=1)
        else:
            image = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA",
                                   threads=1).to_ndarray()
        rotation = self.probe.rotation
        if rotation in (90, 180, 270):
            image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))   # as FFmpeg autorotates (tested)
        return image
