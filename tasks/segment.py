"""A frame range of a video as a video of its own, with the matching stretch of its audio.

Quality is measured as a user meets it: fine-tune on the first part of a clip, dub the rest
(DESIGN section 6). Cutting the parts into files lets both go through the commands a user runs
(`resync model finetune`, `resync dub`) instead of a copy of them; the cut is frame-exact (the
frames are decoded and re-encoded near-losslessly, their timestamps kept, so a variable frame rate
stays variable) and the source is never modified.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np

from catalogs.errors import ErrorClass, ResyncError
from catalogs.storage import Storage
from tasks.decode import VideoSource, local_path
from tasks.encode import encode_h264

SEGMENT_CRF = 10   # near-lossless: the cut part stands in for the source in comparisons


def cut_segment(storage: Storage, uri: str, start: int, stop: int, out_path: str, chunk: int = 32) -> str:
    """Write frames ``start..stop`` of ``uri`` (and its audio over the same time span, when it has
    audio) to the local file ``out_path``; returns ``out_path``."""
    with VideoSource(storage, uri) as video:
        stop = min(stop, video.n_frames)
        if not 0 <= start < stop:
            raise ResyncError(ErrorClass.UNSUPPORTED_INPUT, f"empty frame range {start}..{stop}", item=uri)
        ts = video.timestamps
        t0 = float(ts[start])
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0 / max(video.fps, 1e-6)
        t1 = float(ts[stop]) if stop < len(ts) else float(ts[-1] + step)
        frames = (f for c in video.chunks(chunk, start, stop) for f in c.frames)
        has_audio = video.probe.has_audio
        fd, silent = tempfile.mkstemp(suffix=".mp4", prefix="resync-seg-")
        os.close(fd)
        try:
            encode_h264(silent, frames, video.fps, ts[start:stop] - t0, crf=SEGMENT_CRF)
            cmd = ["ffmpeg", "-y", "-v", "error", "-i", silent]
            with local_path(storage, uri) as src:
                if has_audio:
                    cmd += ["-ss", f"{t0:.6f}", "-t", f"{t1 - t0:.6f}", "-i", src, "-map", "0:v:0", "-map", "1:a:0",
                            "-c:a", "aac", "-b:a", "192k"]
                cmd += ["-c:v", "copy", out_path]
                proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ResyncError(ErrorClass.INTERNAL, f"ffmpeg could not cut the segment: {proc.stderr.strip()[-300:]}",
                                  item=uri)
        finally:
            os.unlink(silent)
    return out_path


__all__ = ["cut_segment", "SEGMENT_CRF"]
