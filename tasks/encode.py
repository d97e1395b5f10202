"""Writing video with PyAV (FFmpeg's libx264): frames in, a playable H.264 MP4 out, published whole."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from typing import Iterable

import av
import numpy as np

from catalogs.storage import Storage


def write_h264(storage: Storage, uri: str, frames: Iterable[np.ndarray], fps: float, crf: int = 20,
               preset: str = "veryfast") -> int:
    """Encode RGB frames to ``uri`` (local or S3); returns the frame count. The file appears only
    when complete: it is written to a temporary file and then published atomically."""
    fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix="resync-enc-")
    os.close(fd)
    n = 0
    try:
        with av.open(tmp, mode="w") as out:
            stream = None
            for frame in frames:
                if stream is None:
                    h, w = frame.shape[:2]
                    stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000))
                    stream.width, stream.height = w - w % 2, h - h % 2
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": preset}
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: stream.height, : stream.width]), format="rgb24")
                for packet in stream.encode(vf):
                    out.mux(packet)
                n += 1
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
        storage.put_file(tmp, uri)
    finally:
        os.unlink(tmp)
    return n
