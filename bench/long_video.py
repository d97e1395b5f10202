"""Long and 1080p videos: peak memory and speed of ``resync dub`` against the video's length.

Each length is a shared clip looped with ``ffmpeg -stream_loop N -c copy`` (no re-encode), dubbed
with its own audio by ``resync dub`` in a fresh process that reports its own peak RSS; the floor is
FFmpeg decoding the same file and encoding it with x264 at our CRF and preset, one thread each.

On a shared machine either time can drift by 10% from one minute to the next (the floor of the 20-s
clip read 13.7 and 16.0 s in consecutive runs), so ``--repeats N`` runs floor and dub N times in
turn and reports the medians and the median of the N paired ratios, with their spread.

    .venv/bin/python -m bench.long_video                                   # 1080x1920: 20 s, 60 s, 5 min
    .venv/bin/python -m bench.long_video --seconds 20 --repeats 3                 # the 20-s row, 3 pairs
    .venv/bin/python -m bench.long_video --clip address_man_long_60s.mp4 --seconds 60 180
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
console = Console(width=170)

# Runs the CLI in the child process and prints the child's own peak RSS (bytes) on the last line.
# VmHWM, not getrusage's ru_maxrss: Linux carries the parent's high-water mark into a child
# started by vfork (Python's subprocess) through its exec, so under a 4-GB pytest process
# ru_maxrss reads 4 GB for a 2.5-GB dub. VmHWM belongs to the address space the exec made.
MEASURE = """
import resource, runpy, sys
sys.argv = ["resync", *sys.argv[1:]]
from flows.cli_start import prepare_process
prepare_process(sys.argv)         # first, as the resync executable does (flows.cli_start)
import flows.cli_common as common


def print_peak():
    try:
        with open("/proc/self/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):     # not Linux: ru_maxrss (kilobytes on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print("PEAK_RSS", peak, flush=True)


end_process = common.end_process
def end_with_peak(code):      # resync dub ends its process without teardown: say the peak first
    if code == 0:
        print_peak()
    end_process(code)


common.end_process = end_with_peak
try:
    runpy.run_module("flows.cli", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print_peak()
"""


@dataclass
class LengthRow:
    clip: str
    seconds: float
    width: int
    height: int
    frames: int
    dub_walls_s: list[float]   # each run of the whole `resync dub` process: load, track, dub, publish
    floors_s: list[float]      # each FFmpeg one-thread decode + x264 encode of the same file, just before
    peak_rss_gb: float         # the highest of the runs

    @property
    def dub_wall_s(self) -> float:
        return statistics.median(self.dub_walls_s)

    @property
    def floor_s(self) -> float:
        return statistics.median(self.floors_s)

    @property
    def ratios(self) -> list[float]:
        """Each dub over the floor measured just before it."""
        return [d / f for d, f in zip(self.dub_walls_s, self.floors_s)]

    @property
    def realtime(self) -> float:
        return self.seconds / self.dub_wall_s

    @property
    def over_floor(self) -> float:
        return statistics.median(self.ratios)


def looped(clip: Path, seconds: float, clip_seconds: float, scratch: Path) -> Path:
    """``clip`` repeated (stream copy) to at least ``seconds``; the clip itself when it is long enough."""
    loops = max(1, math.ceil(seconds / clip_seconds - 0.05))   # a 59.96-s clip makes "60 s"
    if loops == 1:
        return clip
    out = scratch / f"{clip.stem}_x{loops}.mp4"
    subprocess.run(["ffmpeg", "-y", "-v", "error", "-stream_loop", str(loops - 1), "-i", str(clip), "-c", "copy",
                    str(out)], check=True)
    return out


def dub_peak_rss(video: Path, audio: Path, out: Path, env: dict[str, str], timeout: float = 3600) -> tuple[int, dict]:
    """(peak RSS bytes, the `resync dub --json` result) of one dub in its own process."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, "dub", str(video), str(audio), "-o", str(out), "--json"],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"resync dub {video.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    body = "\n".join(lines[:-1])
    return int(lines[-1].split()[1]), json.loads(body[body.find("{"): body.rfind("}") + 1])


def ffmpeg_floor(video: Path, crf: int, preset: str, scratch: Path) -> float:
    """Seconds for FFmpeg to decode ``video`` and encode it as we do, one thread each."""
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-y", "-v", "error", "-threads", "1", "-i", str(video), "-an", "-c:v", "libx264",
                    "-threads", "1", "-crf", str(crf), "-preset", preset, "-pix_fmt", "yuv420p",
                    str(scratch / "floor.mp4")], check=True)
    return time.perf_counter() - t


def measure(clip: Path, lengths: list[float], scratch: Path, repeats: int = 1) -> list[LengthRow]:
    from catalogs.probe import probe_video
    from catalogs.settings import Settings
    from catalogs.storage import Storage

    settings = Settings(allowed_roots=[str(SHARED), str(scratch)])
    probe = probe_video(Storage(settings), str(clip))
    env = {"RESYNC_ROOT": str(scratch / "root"), "RESYNC_ALLOWED_ROOTS": json.dumps([str(SHARED), str(scratch)]),
           "RESYNC_FEATURE_CACHE_DIR": str(scratch / "no-cache")}
    rows = []
    for seconds in lengths:
        video = looped(clip, seconds, probe.duration_s, scratch)
        floors, walls, peak = [], [], 0
        for _ in range(max(1, repeats)):      # floor and dub in turn: each pair sees the same machine
            floors.append(ffmpeg_floor(video, settings.output_crf, settings.output_preset, scratch))
            t = time.perf_counter()
            rss, result = dub_peak_rss(video, video, scratch / "dub.mp4", env)
            walls.append(time.perf_counter() - t)
            peak = max(peak, rss)
            console.print(f"{video.name}: {float(result.get('video_seconds', seconds)):.0f} s dubbed in {walls[-1]:.1f} s "
                          f"(floor {floors[-1]:.1f} s), peak RSS {rss / 2**30:.2f} GB")
        rows.append(LengthRow(video.name, float(result.get("video_seconds", seconds)), probe.width, probe.height,
                              int(result.get("frames", 0)), walls, floors, peak / 2**30))
    return rows


def table(rows: list[LengthRow]) -> Table:
    n = max(len(r.ratios) for r in rows) if rows else 1
    t = Table(title=f"resync dub against the video's length (this machine; own process per run; median of {n})")
    for col in ("clip", "size", "video s", "frames", "dub wall s", "realtime x", "ffmpeg 1-thread s", "x floor",
                "x floor range", "peak RSS GB"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.clip, f"{r.width}x{r.height}", f"{r.seconds:.0f}", str(r.frames), f"{r.dub_wall_s:.1f}",
                  f"{r.realtime:.2f}", f"{r.floor_s:.1f}", f"{r.over_floor:.2f}",
                  f"{min(r.ratios):.2f}-{max(r.ratios):.2f}", f"{r.peak_rss_gb:.2f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="kitchen_man_vertical_20s.mp4", help="video in ../shared/data/videos to loop")
    ap.add_argument("--seconds", type=float, nargs="+", default=[20, 60, 300], help="lengths to make and dub")
    ap.add_argument("--repeats", type=int, default=1, help="floor-then-dub pairs per length (medians reported)")
    ap.add_argument("--scratch", default=str(REPO / ".work" / "bench-long"), help="where loops and outputs go")
    args = ap.parse_args()
    clip = SHARED / "videos" / args.clip
    if not clip.is_file():
        raise SystemExit(f"needs {clip} (../shared/data)")
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    rows = measure(clip, args.seconds, scratch, args.repeats)
    console.print(table(rows))
    out = REPO / "bench" / "results" / f"long-video-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([{**asdict(r), "dub_wall_s": r.dub_wall_s, "floor_s": r.floor_s, "ratios": r.ratios,
                                "realtime": r.realtime, "over_floor": r.over_floor} for r in rows],
                              indent=1))
    console.print(f"results: {out}")


if __name__ == "__main__":
    main()
