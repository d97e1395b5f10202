"""Probing catalog media: what a file is, before anything is planned for it.

Probing reads the container header and decodes one frame (video) or the whole stream (audio,
which is small) with PyAV, so that corrupt, truncated, empty and non-media files are rejected at
ingest with a typed error rather than failing a nightly run. It lives in ``catalogs`` because
ingestion needs it and ``catalogs`` sits below ``tasks``; decoding proper lives in ``tasks``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av

from catalogs.errors import ErrorClass, ResyncError
from catalogs.storage import Storage, is_s3

STILL_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif", "tiff_pipe"}


@dataclass(frozen=True)
class VideoProbe:
    duration_s: float
    fps: float
    frame_count: int
    width: int          # displayed (after rotation)
    height: int
    rotation: int       # degrees clockwise to display upright: 0, 90, 180, 270
    has_audio: bool
    video_codec: str
    audio_codec: str | None


@dataclass(frozen=True)
class AudioProbe:
    duration_s: float
    sample_rate: int
    channels: int
    codec: str


def _check_file(storage: Storage, uri: str) -> int:
    try:
        size = storage.size(uri)
    except FileNotFoundError:
        raise ResyncError(ErrorClass.MISSING_FILE, "file does not exist", item=uri) from None
    if size == 0:
        raise ResyncError(ErrorClass.EMPTY_FILE, "file is empty (0 bytes)", item=uri)
    return size


@contextmanager
def open_media(storage: Storage, uri: str, error_class: ErrorClass) -> Iterator[av.container.InputContainer]:
    """Open a container from local disk or S3; unreadable files raise ``error_class``."""
    _check_file(storage, uri)
    fobj = storage.open(uri) if is_s3(uri) else None
    try:
        try:
            container = av.open(fobj if fobj is not None else uri, mode="r")
        except (av.FFmpegError, ValueError, UnicodeDecodeError) as e:
            raise ResyncError(error_class, f"not a readable media file ({e.__class__.__name__}: {e})", item=uri) from e
        with container:
            yield container
    finally:
        if fobj is not None:
            fobj.close()


def _rotation(frame: av.VideoFrame) -> int:
    # Same convention as the MP4 ``rotate`` tag phones write: degrees clockwise to display upright.
    return int(round(frame.rotation or 0)) % 360


def probe_video(storage: Storage, uri: str) -> VideoProbe:
    """Container facts plus one decoded frame; raises ``ResyncError`` for anything we cannot dub."""
    with open_media(storage, uri, ErrorClass.DECODE_ERROR) as c:
        if c.format.name in STILL_IMAGE_FORMATS:
            raise ResyncError(ErrorClass.UNSUPPORTED_INPUT, f"a still image ({c.format.name}), not a video", item=uri)
        if not c.streams.video:
            kinds = sorted({s.type for s in c.streams}) or ["nothing"]
            raise ResyncError(ErrorClass.NO_VIDEO_STREAM, f"no video stream (has {', '.join(kinds)})", item=uri)
        vs = c.streams.video[0]
        audio = c.streams.audio[0] if c.streams.audio else None
        try:
            frame = next(c.decode(vs))
        except (av.FFmpegError, StopIteration) as e:
            raise ResyncError(ErrorClass.DECODE_ERROR, f"no decodable video frame ({e.__class__.__name__}: {e})", item=uri) from e
        rate = vs.average_rate or vs.guessed_rate or Fraction(0)
        fps = float(rate)
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        else:
            duration = 0.0
        frames = int(vs.frames) or int(round(duration * fps))
        rotation = _rotation(frame)
        w, h = frame.width, frame.height
        if rotation in (90, 270):
            w, h = h, w
        return VideoProbe(
            duration_s=duration, fps=fps, frame_count=frames, width=w, height=h, rotation=rotation,
            has_audio=audio is not None, video_codec=vs.codec_context.name,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )


def probe_audio(storage: Storage, uri: str) -> AudioProbe:
    """Decode a whole audio track (any container, rate, channel count) to prove it is usable."""
    with open_media(storage, uri, ErrorClass.AUDIO_DECODE_ERROR) as c:
        if not c.streams.audio:
            raise ResyncError(ErrorClass.AUDIO_DECODE_ERROR, "no audio stream", item=uri)
        stream = c.streams.audio[0]
        samples = 0
        try:
            for frame in c.decode(stream):
                samples += frame.samples
        except av.FFmpegError as e:
            raise ResyncError(ErrorClass.AUDIO_DECODE_ERROR, f"audio does not decode ({e.__class__.__name__}: {e})", item=uri) from e
        rate = stream.codec_context.sample_rate or stream.rate
        if samples == 0 or not rate:
            raise ResyncError(ErrorClass.AUDIO_DECODE_ERROR, "audio stream holds no samples", item=uri)
        return AudioProbe(duration_s=samples / rate, sample_rate=int(rate),
                          channels=int(stream.codec_context.channels), codec=stream.codec_context.name)
