"""Throughput benchmark (DESIGN section 6): end-to-end dub of one clip on embedded defaults.

Measures, in one run on this machine:
- the floor: FFmpeg decoding the clip and encoding it again with our x264 settings;
- the single-item path (``resync dub``'s work: track, features, dynamics, render, composite, encode,
  mux) with per-stage frames per second, model load time and peak memory;
- the same item through the nightly flow (Prefect ephemeral API, Ray actor pools, manifest commit),
  on a fresh catalog, so the orchestration's cost shows;
- a small catalog through the nightly flow (6 short clips x 2 languages, ``--flow-items`` of them),
  where clips are tracked once for all their languages and dubbed while the next are tracked:
  realtime factor beside the two above, and the flow's stage seconds per item from the manifest.

    make bench-throughput                       # address_man_long_60s.mp4 + english_commentary_60s.wav
    .venv/bin/python -m bench.throughput --clip speaker_map_5s.mp4 --audio german1.wav --skip-flow
    .venv/bin/python -m bench.throughput --clip speaker_map_5s.mp4 --audio german1.wav --flow-items 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
console = Console(width=120)


def ffmpeg_floor(path: Path, crf: int, preset: str, scratch: Path) -> float:
    """Seconds for FFmpeg to decode the clip and encode it as we do (x264, same CRF and preset)."""
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-y", "-v", "error", "-i", str(path), "-an", "-c:v", "libx264", "-crf", str(crf),
                    "-preset", preset, "-pix_fmt", "yuv420p", str(scratch / "floor.mp4")], check=True)
    return time.perf_counter() - t


def single_item(video: Path, audio: Path, scratch: Path) -> dict:
    """Track + dub in this process, stage by stage."""
    from catalogs.settings import Settings
    from catalogs.storage import Storage
    from tasks import model_store
    from tasks.lipsync import DubInputs, dub
    from tasks.track import track_video

    settings = Settings(root=str(scratch / "root"), allowed_roots=[str(SHARED), str(scratch)],
                        feature_cache_dir=str(scratch / "no-cache"))
    storage = Storage(settings)
    t = time.perf_counter()
    model = model_store.load_model(settings)
    features = model_store.features_for(settings, model)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    track = track_video(storage, settings, str(video))
    track_s = time.perf_counter() - t
    result = dub(storage, settings, str(video), DubInputs(str(audio)), str(scratch / "dub.mp4"), model, features, track,
                 model_store.feature_cache(settings))
    return {"frames": result.frames, "video_s": result.video_seconds, "load_s": load_s, "track_s": track_s,
            **{k: v for k, v in result.timings.items()},
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def through_flow(video: Path, audio: Path, scratch: Path) -> dict:
    """The same item through `resync run nightly` (its own process: Prefect, Ray, manifest)."""
    wall, summary, rows = nightly([("clip", video)], [("clip", "xx", audio)], scratch / "flow")
    stages = dict(rows[0]["stage_seconds"]) if rows and rows[0]["stage_seconds"] else {}
    return {"process_wall_s": wall, "flow_wall_s": summary["wall_s"], "video_s": summary["video_seconds"],
            "succeeded": summary["succeeded"], "stages": stages}


def nightly(videos: list[tuple[str, Path]], requests: list[tuple[str, str, Path]],
            scratch: Path) -> tuple[float, dict, list]:
    """Ingest a fresh catalog under ``scratch`` and time `resync run nightly` over it in its own
    process: (process wall seconds, the run summary, the manifest rows)."""
    root = scratch / "root"
    listing = scratch / "listings"
    listing.mkdir(parents=True, exist_ok=True)
    (listing / "videos.csv").write_text("video_id,uri,speaker_id\n" + "".join(f"{v},{u},spk\n" for v, u in videos))
    (listing / "requests.csv").write_text("video_id,language,audio_uri\n"
                                          + "".join(f"{v},{lang},{u}\n" for v, lang, u in requests))
    env = {**os.environ, "RESYNC_ROOT": str(root), "RESYNC_ALLOWED_ROOTS": json.dumps([str(SHARED), str(scratch)]),
           "RESYNC_FEATURE_CACHE_DIR": str(scratch / "cache"), "PREFECT_HOME": str(scratch / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cli = [sys.executable, "-m", "flows.cli"]
    subprocess.run([*cli, "catalog", "ingest", "--videos", str(listing / "videos.csv"), "--requests",
                    str(listing / "requests.csv")], env=env, check=True, capture_output=True)
    t = time.perf_counter()
    proc = subprocess.run([*cli, "run", "nightly", "--json"], env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"nightly run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout[proc.stdout.find("{"):])
    from deltalake import DeltaTable

    rows = DeltaTable(str(root / "manifests" / "dubs")).to_pyarrow_table(
        columns=["video_id", "language", "status", "stage_seconds"]).to_pylist()
    return wall, summary, rows


CATALOG_CLIPS = ("speaker_map_5s.mp4", "speaker_glasses_5s.mp4", "address_man_10s.mp4", "address_woman_mpeg4_8s.mp4",
                 "interview_man_vfr_6s.mp4", "vlog_woman_vertical_10s.mp4")
CATALOG_AUDIO = {"de": "german1.wav", "fr": "french1.wav"}


def catalog_items(n: int | None) -> list[tuple[str, str, str]]:
    """The first ``n`` (default all) of (clip, language, audio): every catalog clip in both languages."""
    items = [(clip, lang, audio) for clip in CATALOG_CLIPS for lang, audio in CATALOG_AUDIO.items()]
    return items[:n] if n else items


def through_flow_catalog(items: list[tuple[str, str, str]], scratch: Path) -> dict:
    """A small catalog through `resync run nightly`: each clip is tracked once for all its languages,
    and dubbed while the next clips are tracked. Stage seconds are means per succeeded item;
    ``track_s`` is a video's (shared by its languages), so it is also given per video."""
    clips = list(dict.fromkeys(clip for clip, _, _ in items))
    vid = {clip: f"c{i}" for i, clip in enumerate(clips)}
    wall, summary, rows = nightly([(vid[c], SHARED / "videos" / c) for c in clips],
                                  [(vid[c], lang, SHARED / "audio" / a) for c, lang, a in items], scratch / "catalog")
    done = [r for r in rows if r["status"] == "succeeded"]
    ok = [dict(r["stage_seconds"] or []) for r in done]
    keys = list(dict.fromkeys(k for st in ok for k in st))
    means = {k: sum(st.get(k, 0.0) for st in ok) / len(ok) for k in keys} if ok else {}
    per_video = {r["video_id"]: st.get("track_s", 0.0) for r, st in zip(done, ok)}
    return {"items": len(items), "videos": len(clips), "process_wall_s": wall, "flow_wall_s": summary["wall_s"],
            "video_s": summary["video_seconds"], "succeeded": summary["succeeded"], "failed": summary["failed"],
            "failures": summary["failures"], "stage_means": means,
            "track_s_per_video": sum(per_video.values()) / len(per_video) if per_video else 0.0}


def print_catalog(item: dict, end_to_end: float, flow: dict | None, catalog: dict) -> None:
    """The catalog run beside the single item and the 1-item flow: realtime factors, then the flow's
    fixed costs per item (manifest stage seconds)."""
    t = Table(title=f"catalog: {catalog['items']} items ({catalog['videos']} clips x languages), nightly flow")
    for col in ("path", "items", "video s", "wall s", "realtime x", "wall s / item"):
        t.add_column(col)
    t.add_row("single item (resync dub)", "1", f"{item['video_s']:.1f}", f"{end_to_end:.1f}",
              f"{item['video_s'] / end_to_end:.2f}", f"{end_to_end:.1f}")
    runs = [("nightly flow, 1 item", 1, flow)] if flow else []
    runs.append(("nightly flow, catalog", catalog["items"], catalog))
    for name, n, r in runs:
        for wall in ("process_wall_s", "flow_wall_s"):
            t.add_row(f"{name} ({wall.split('_')[0]} wall)", str(n), f"{r['video_s']:.1f}", f"{r[wall]:.1f}",
                      f"{r['video_s'] / r[wall]:.2f}" if r[wall] > 0 else "-", f"{r[wall] / n:.1f}")
    console.print(t)
    if catalog["failed"]:
        console.print(f"[red]catalog: {catalog['failed']} items failed[/red] {catalog['failures']}")
    stages = Table(title="nightly flow, stage seconds per item (manifest means)")
    for col in ("stage", "1 item", f"catalog ({catalog['succeeded']} items)"):
        stages.add_column(col)
    one = flow["stages"] if flow else {}
    for k in dict.fromkeys([*one, *catalog["stage_means"]]):
        stages.add_row(k, f"{one[k]:.2f}" if k in one else "-",
                       f"{catalog['stage_means'][k]:.2f}" if k in catalog["stage_means"] else "-")
    stages.add_row("track_s per video (tracked once)", f"{one['track_s']:.2f}" if "track_s" in one else "-",
                   f"{catalog['track_s_per_video']:.2f}")
    console.print(stages)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="address_man_long_60s.mp4", help="video in ../shared/data/videos")
    ap.add_argument("--audio", default="english_commentary_60s.wav", help="audio in ../shared/data/audio")
    ap.add_argument("--skip-flow", action="store_true", help="leave out the same item through the nightly flow")
    ap.add_argument("--skip-catalog", action="store_true", help="leave out the catalog run through the nightly flow")
    ap.add_argument("--flow-items", type=int, default=None, metavar="N",
                    help=f"items of the catalog run: the first N of {len(CATALOG_CLIPS)} short clips x "
                         f"{len(CATALOG_AUDIO)} languages, clip by clip (default all {len(catalog_items(None))})")
    ap.add_argument("--scratch", default=str(REPO / ".work" / "bench-throughput"))
    args = ap.parse_args()
    video, audio = SHARED / "videos" / args.clip, SHARED / "audio" / args.audio
    if not video.is_file() or not audio.is_file():
        raise SystemExit(f"needs {video} and {audio} (../shared/data)")
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    from catalogs.settings import Settings

    s = Settings()
    floor = ffmpeg_floor(video, s.output_crf, s.output_preset, scratch)
    item = single_item(video, audio, scratch)
    flow = None if args.skip_flow else through_flow(video, audio, scratch)
    catalog = None if args.skip_catalog else through_flow_catalog(catalog_items(args.flow_items), scratch)

    n, vs = item["frames"], item["video_s"]
    stages = Table(title=f"single item: {args.clip} ({n} frames, {vs:.1f} s) + {args.audio}")
    for col in ("stage", "seconds", "frames/s"):
        stages.add_column(col)
    for key, name in (("load_s", "model load"), ("track_s", f"decode + track ({s.tracking_segments} segments at once)"),
                      ("audio_s", "audio decode"), ("dynamics_s", "features + dynamics"),
                      ("redraw_wall_s", f"decode + redraw + composite + encode (wall; {s.redraw_workers} redraw workers)"),
                      ("render_s", "  mesh render (busy s, summed over workers)"),
                      ("redraw_s", "  crop + render + generator (busy s, summed)"),
                      ("composite_s", "  composite (busy s, summed)"), ("mux_publish_s", "mux + publish")):
        if key in item:
            stages.add_row(name, f"{item[key]:.2f}", f"{n / item[key]:.0f}" if item[key] > 0 else "-")
    end_to_end = item["load_s"] + item["track_s"] + item["total_s"]
    stages.add_row("[bold]end to end[/bold]", f"{end_to_end:.2f}", f"{n / end_to_end:.1f}")
    console.print(stages)

    t = Table(title="throughput (one run, this machine)")
    for col in ("path", "wall s", "realtime x", "x ffmpeg decode+encode", "peak RSS GB"):
        t.add_column(col)
    t.add_row("ffmpeg decode + x264 encode (floor)", f"{floor:.2f}", f"{vs / floor:.1f}", "1.0", "-")
    t.add_row("single item (resync dub)", f"{end_to_end:.1f}", f"{vs / end_to_end:.2f}", f"{end_to_end / floor:.0f}",
              f"{item['peak_rss_gb']:.2f}")
    if flow:
        t.add_row("nightly flow, 1 item (process wall)", f"{flow['process_wall_s']:.1f}",
                  f"{vs / flow['process_wall_s']:.2f}", f"{flow['process_wall_s'] / floor:.0f}", "-")
        t.add_row("nightly flow, 1 item (flow wall)", f"{flow['flow_wall_s']:.1f}", f"{vs / flow['flow_wall_s']:.2f}",
                  f"{flow['flow_wall_s'] / floor:.0f}", "-")
    console.print(t)
    if flow and flow["stages"]:
        console.print("nightly flow, the item's stage seconds (manifest): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in flow["stages"].items()))
    if catalog:
        print_catalog(item, end_to_end, flow, catalog)
    out = REPO / "bench" / "results" / f"throughput-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"clip": args.clip, "audio": args.audio, "floor_s": floor, "item": item, "flow": flow,
                               "catalog": catalog}, indent=1))
    console.print(f"results: {out}")


if __name__ == "__main__":
    main()
