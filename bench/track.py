"""Tracking benchmark: frames per second of decode + track + crop on this machine.

    make bench-track            # address_man_long_60s.mp4 (256x256, 60 s) and actor_1080p_4s.mp4 (1080p)
    python -m bench.track --clips PATH [PATH ...]

Measured in one run for each clip: FFmpeg's own decode (the floor), our decode (PyAV, chunks),
tracking (decode + MediaPipe + smoothing, pose, dynamics), the aligned crops (decode + warp), and
the whole of decode + track + crop.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.decode import VideoSource
from tasks.geometry import warp_crop
from tasks.track import track_video

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_CLIPS = [SHARED / "videos" / "address_man_long_60s.mp4", SHARED / "videos" / "actor_1080p_4s.mp4"]
console = Console(width=170)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def ffmpeg_decode(path: Path) -> float:
    t, _ = timed(lambda: subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), "-an", "-f", "null", "-"],
                                        check=True))
    return t


def decode_only(storage: Storage, path: Path, chunk: int) -> int:
    n = 0
    with VideoSource(storage, str(path)) as v:
        for c in v.chunks(chunk):
            n += len(c.frames)
    return n


def crops(storage: Storage, path: Path, result, size: int, chunk: int) -> int:
    n = 0
    with VideoSource(storage, str(path)) as v:
        for c in v.chunks(chunk):
            for i, frame in zip(c.indices, c.frames):
                if result.valid[i]:
                    warp_crop(frame, result.crop[i], size)
                    n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", nargs="*", type=Path, default=DEFAULT_CLIPS, help="videos to measure")
    args = ap.parse_args()
    settings = Settings()
    storage = Storage(settings)
    t = Table(title=f"decode + track + crop ({settings.crop_size}-px crops; 1 FFmpeg thread for the floor)")
    for col in ("clip", "frames", "size", "ffmpeg decode fps", "our decode fps", "track fps", "crop fps",
                "decode+track+crop fps", "realtime x"):
        t.add_column(col, justify="right")
    for path in args.clips:
        console.print(f"measuring {path.name} ...")
        t_ff = ffmpeg_decode(path)
        t_dec, n = timed(lambda: decode_only(storage, path, settings.decode_chunk))
        t_track, result = timed(lambda: track_video(storage, settings, str(path)))
        t_crop, _ = timed(lambda: crops(storage, path, result, settings.crop_size, settings.decode_chunk))
        total = t_track + t_crop
        duration = float(result.timestamps[-1] + 1 / result.fps)
        t.add_row(path.name, str(n), f"{result.width}x{result.height}", f"{n / t_ff:.0f}", f"{n / t_dec:.0f}",
                  f"{n / t_track:.1f}", f"{n / t_crop:.0f}", f"{n / total:.1f}", f"{duration / total:.2f}")
    console.print(t)


if __name__ == "__main__":
    main()
