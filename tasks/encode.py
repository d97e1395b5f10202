"""Writing video with PyAV (FFmpeg's libx264): frames in, a playable H.264 MP4 out, published whole."""

from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from typing import Iterable

import av
import cv2
import numpy as np

from catalogs.errors import ErrorClass, ResyncError
from catalogs.storage import Storage


def pixel_format(width: int, height: int) -> str:
    """yuv420p, which every player decodes, for even sizes; yuv444p (H.264 High 4:4:4) for an odd
    width or height, which 4:2:0 cannot hold (its chroma, and H.264's frame cropping, come in pairs
    of pixels): the output keeps the source's resolution rather than losing a row or column."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


def video_frame(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """An RGB frame for an encoder that takes ``pix_fmt``. 4:2:0 is converted here by OpenCV (BT.601,
    limited range, as swscale's default, which the encoder would otherwise run): 1 ms a 1080p frame
    against swscale's 3 ms, on the thread that encodes. Other formats are left to swscale.

    The frame wraps OpenCV's I420 buffer itself (Y, U and V planes back to back, rows without
    padding), so nothing is copied into frame memory of its own: x264 copies the picture into its
    own frames when it is handed one and reads only the visible width of each row, and the
    bitstream is the same as from a copy into padded planes (checked byte for byte with glibc's
    M_PERTURB, which makes x264's own uninitialised reads repeatable; see ``tasks.malloc``)."""
    if pix_fmt == "yuv420p":
        i420 = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
        return av.VideoFrame.from_numpy_buffer(i420, format="yuv420p")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")


def encode_h264(path: str, frames: Iterable[np.ndarray], fps: float, timestamps: np.ndarray | None = None,
                crf: int = 20, preset: str = "veryfast") -> int:
    """Encode RGB frames to a local MP4 file at their own size; returns the frame count.

    With ``timestamps`` (seconds, one per frame) every frame keeps its own presentation time, so a
    variable-frame-rate source stays variable; without, frames are spaced 1/fps apart.
    """
    tb = Fraction(1, 90_000)
    n, last_pts = 0, -1
    with av.open(path, mode="w") as out:
        stream = None
        for frame in frames:
            if stream is None:
                h, w = frame.shape[:2]
                stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(100_000))
                stream.width, stream.height = w, h
                stream.pix_fmt = pixel_format(w, h)
                stream.time_base = tb
                stream.codec_context.time_base = tb
                stream.options = {"crf": str(crf), "preset": preset}
            vf = video_frame(frame, stream.pix_fmt)
            ts = float(timestamps[n]) if timestamps is not None else n / fps
            pts = max(int(round(ts / tb)), last_pts + 1)
            vf.pts, vf.time_base, last_pts = pts, tb, pts
            for packet in stream.encode(vf):
                out.mux(packet)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return n


def write_h264(storage: Storage, uri: str, frames: Iterable[np.ndarray], fps: float, crf: int = 20,
               preset: str = "veryfast") -> int:
    """Encode RGB frames to ``uri`` (local or S3); returns the frame count. The file appears only
    when complete: it is written to a temporary file and then published atomically."""
    fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix="resync-enc-")
    os.close(fd)
    try:
        n = encode_h264(tmp, frames, fps, crf=crf, preset=preset)
        storage.put_file(tmp, uri)
    finally:
        os.unlink(tmp)
    return n


class AudioEncoding:
    """The dub's sound encoded to AAC by its own FFmpeg process while the frames are made, padded
    with silence or cut to ``seconds``. Why apart from the mux: the AAC encode was 0.43 of the mux's
    0.45 s after a 20-s 1080p dub's last frame, serial and growing with the length; started before
    the frames, it overlaps them and the mux only copies (the same AAC packets and timing)."""

    def __init__(self, audio_path: str, out_path: str, seconds: float) -> None:
        self.out_path = out_path
        self._proc = subprocess.Popen(
            ["ffmpeg", "-y", "-v", "error", "-i", audio_path, "-map", "0:a:0", "-c:a", "aac", "-b:a", "160k",
             "-ar", "48000", "-af", "apad", "-t", f"{seconds:.6f}", out_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def result(self) -> str:
        """The encoded file, once FFmpeg has finished it; ``ResyncError`` when it failed."""
        _, stderr = self._proc.communicate()
        if self._proc.returncode != 0:
            raise ffmpeg_error("audio encode", stderr)
        return self.out_path

    def stop(self) -> None:
        """End the encode if it still runs (the dub failed before its mux)."""
        if self._proc.poll() is None:
            self._proc.kill()
        if self._proc.stderr is not None and not self._proc.stderr.closed:   # not yet collected by result()
            self._proc.communicate()


def mux_audio(video_path: str, audio_path: str | None, out_path: str) -> None:
    """Copy the video stream and the encoded audio (``AudioEncoding``'s) into one MP4, index first."""
    cmd = ["ffmpeg", "-y", "-v", "error", "-i", video_path]
    if audio_path:
        cmd += ["-i", audio_path, "-map", "0:v:0", "-map", "1:a:0"]
    cmd += ["-c", "copy", "-movflags", "+faststart", out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ffmpeg_error("mux", proc.stderr)


def ffmpeg_error(step: str, stderr: str) -> ResyncError:
    """A full disk under the work folder is the storage's failure, not ours."""
    full = "No space left on device" in stderr
    return ResyncError(ErrorClass.STORAGE_ERROR if full else ErrorClass.INTERNAL,
                       f"ffmpeg {step} failed: {stderr.strip()[-400:]}")
