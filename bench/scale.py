"""Scale benchmark: planning, a shard commit and the latest-status query over large synthetic catalogs.

For each size N: a catalog of N requests (N/4 videos x 4 languages) and a manifest already holding
N rows (half of the items succeeded, written over ``--manifest-commits`` commits), then:
plan (all pending items into shards; reads tables only, never media), one shard commit (median of 5),
the latest-status query, and the manifest's size. A second table shows the cost of one shard commit
as the manifest's history grows, which checkpoints keep flat.

    make bench-scale                       # 10^4, 10^5, 10^6 on local disk
    python -m bench.scale --sizes 10000 --s3   # against a local S3 endpoint (moto)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake
from rich.console import Console
from rich.table import Table

from catalogs.delta import DeltaTables
from catalogs.manifest import DubManifest, dub_rows
from catalogs.plan import input_key, make_shards, plan_items
from catalogs.schemas import DUBS, DUBS_TABLE, REQUESTS, REQUESTS_TABLE, VIDEOS, VIDEOS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage

LANGS = ("fr", "de", "es", "ja")
console = Console(width=170)


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def build(tables: DeltaTables, n: int, manifest_commits: int) -> None:
    """Synthetic catalog of ``n`` requests and a manifest of ``n`` rows (every other item succeeded)."""
    now = datetime.now(timezone.utc)
    nv = n // len(LANGS)
    vids = [f"v{i:07d}" for i in range(nv)]
    vsha = [sha(v) for v in vids]
    videos = pa.table({
        "video_id": vids, "uri": [f"s3://catalog/media/{v}.mp4" for v in vids], "speaker_id": [f"spk{i % 997}" for i in range(nv)],
        "title": vids, "duration_s": [30.0] * nv, "fps": [25.0] * nv, "frame_count": [750] * nv, "width": [1280] * nv,
        "height": [720] * nv, "rotation": [0] * nv, "has_audio": [True] * nv, "video_codec": ["h264"] * nv,
        "audio_codec": ["aac"] * nv, "sha256": vsha, "size_bytes": [10_000_000] * nv, "source_mtime": [0.0] * nv,
        "ingested_at": [now] * nv}, schema=VIDEOS)
    rv = [v for v in vids for _ in LANGS]
    rl = [lang for _ in vids for lang in LANGS]
    asha = [sha(f"{v}/{lang}") for v, lang in zip(rv, rl)]
    requests = pa.table({
        "video_id": rv, "language": rl, "audio_uri": [f"s3://catalog/audio/{v}/{lang}.wav" for v, lang in zip(rv, rl)],
        "audio_sha256": asha, "audio_duration_s": [30.0] * n, "audio_sample_rate": [16000] * n, "audio_channels": [1] * n,
        "script": [None] * n, "size_bytes": [1_000_000] * n, "source_mtime": [0.0] * n, "ingested_at": [now] * n}, schema=REQUESTS)
    for name, t in ((VIDEOS_TABLE, videos), (REQUESTS_TABLE, requests)):
        tables.ensure(name)
        write_deltalake(tables.uri(name), t, mode="append", storage_options=tables._opts(name))

    keys = [input_key(vsha[i // len(LANGS)], asha[i], "untrained+-", "cpu") for i in range(n)]
    status = ["succeeded" if i % 2 == 0 else "failed" for i in range(n)]
    dubs = pa.table({
        "run_id": ["run-old"] * n, "shard_id": [f"shard-{i // 1000}" for i in range(n)], "video_id": rv, "language": rl,
        "attempt": pa.array([1] * n, pa.int32()), "input_key": keys, "status": status,
        "error_class": [None if s == "succeeded" else "decode_error" for s in status],
        "error": [None] * n, "output_uri": [None] * n, "output_sha256": [None] * n,
        "base_model_version": ["untrained"] * n, "speaker_model_version": [None] * n, "render_config": ["cpu"] * n,
        "stage_seconds": pa.nulls(n, DUBS.field("stage_seconds").type), "qa": pa.nulls(n, DUBS.field("qa").type),
        "created_at": [now] * n}, schema=DUBS)
    tables.ensure(DUBS_TABLE)
    step = -(-n // manifest_commits)
    for i in range(0, n, step):
        tables.append(DUBS_TABLE, dubs.slice(i, step), {"run_id": "run-old", "shard_id": f"bulk-{i}"})


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def shard_rows(run_id: str, shard_id: str, k: int = 16) -> pa.Table:
    return dub_rows([dict(run_id=run_id, shard_id=shard_id, video_id=f"new{i}", language="fr", attempt=1,
                          input_key=f"k-{shard_id}-{i}", status="succeeded", stage_seconds={"render": 1.0}) for i in range(k)])


def tree_bytes(storage: Storage, uri: str) -> int:
    fs = storage.fs_for(uri)
    return sum(fs.du(uri, total=False).values()) if storage.root.startswith("s3://") else \
        sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())


def bench_size(settings: Settings, n: int, manifest_commits: int) -> dict:
    storage = Storage(settings)
    tables = DeltaTables(storage)
    t_build, _ = timed(lambda: build(tables, n, manifest_commits))
    t_plan, items = timed(lambda: plan_items(tables, "cpu"))
    t_shard, shards = timed(lambda: make_shards(items, settings.shard_size))
    m = DubManifest(tables)
    commits = []
    for i in range(5):
        t, _ = timed(lambda: m.commit_shard("run-bench", f"shard-new-{i}", shard_rows("run-bench", f"shard-new-{i}")))
        commits.append(t)
    t_latest, latest = timed(lambda: m.latest(columns=["status"]))
    return {"requests": n, "pending": len(items), "shards": len(shards), "setup_s": t_build,
            "plan_s": t_plan + t_shard, "commit_s": statistics.median(commits), "latest_s": t_latest,
            "latest_rows": len(latest), "versions": tables.open(DUBS_TABLE).version() + 1,
            "manifest_mb": tree_bytes(storage, tables.uri(DUBS_TABLE)) / 1e6}


def bench_history(settings: Settings, depths: list[int], compact_every: int) -> list[tuple[int, float, float]]:
    """Median shard-commit time when the manifest already has ``depth`` commits: as written, and with
    compaction every ``compact_every`` commits (what the end of each nightly run does)."""
    plain = DubManifest(DeltaTables(Storage(settings.model_copy(update={"root": settings.root + "-plain"}))))
    kept = DubManifest(DeltaTables(Storage(settings.model_copy(update={"root": settings.root + "-compacted"}))))
    out, done = [], 0

    def probe(m: DubManifest, depth: int) -> float:
        times = []
        for i in range(5):
            sid = f"probe{depth}-{i}"
            t, _ = timed(lambda: m.commit_shard("run-h", sid, shard_rows("run-h", sid)))
            times.append(t)
        return statistics.median(times)

    for depth in depths:
        while done < depth:
            for m in (plain, kept):
                m.commit_shard("run-h", f"h{done}", shard_rows("run-h", f"h{done}", 4))
            done += 1
            if done % compact_every == 0:
                kept.tables.maintain(DUBS_TABLE)
        out.append((depth, probe(plain, depth), probe(kept, depth)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated request counts")
    ap.add_argument("--manifest-commits", type=int, default=100, help="commits the pre-existing manifest is written in")
    ap.add_argument("--history", default="10,100,500,1000", help="history depths for the commit-cost table")
    ap.add_argument("--compact-every", type=int, default=100, help="commits between compactions in the history table")
    ap.add_argument("--s3", action="store_true", help="run against a local S3 endpoint (moto server on 127.0.0.1)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic tables")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    depths = [int(x) for x in args.history.split(",")]

    work = Path(tempfile.mkdtemp(prefix="resync-bench-scale-"))
    server = None
    if args.s3:
        import s3fs
        from infra.dev.s3_server import start_s3_server
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        server = start_s3_server(log_path=work / "moto.log")
        s3fs.S3FileSystem(endpoint_url=server.endpoint, skip_instance_cache=True).mkdir("bench-scale")

    def settings_for(name: str) -> Settings:
        if server:
            return Settings(root=f"s3://bench-scale/{name}", s3_endpoint_url=server.endpoint)
        return Settings(root=str(work / name))

    try:
        t = Table(title=f"scale ({'S3 endpoint' if server else 'local disk'}; shard size {Settings().shard_size}; "
                        f"manifest pre-written in {args.manifest_commits} commits)")
        for col in ("requests", "pending", "shards", "plan s", "shard commit s", "latest-status s", "latest rows",
                    "manifest versions", "manifest MB", "setup s"):
            t.add_column(col, justify="right")
        for n in sizes:
            console.print(f"size {n:,}: building...")
            r = bench_size(settings_for(f"n{n}"), n, args.manifest_commits)
            t.add_row(f"{r['requests']:,}", f"{r['pending']:,}", f"{r['shards']:,}", f"{r['plan_s']:.2f}",
                      f"{r['commit_s']:.3f}", f"{r['latest_s']:.2f}", f"{r['latest_rows']:,}", str(r["versions"]),
                      f"{r['manifest_mb']:.1f}", f"{r['setup_s']:.1f}")
        console.print(t)
        h = Table(title="shard commit (16 rows) vs manifest history (checkpoint every "
                        f"{Settings().checkpoint_interval} commits)")
        h.add_column("commits already in the log", justify="right")
        h.add_column("median commit s, never compacted", justify="right")
        h.add_column(f"median commit s, compacted every {args.compact_every}", justify="right")
        for depth, plain, kept in bench_history(settings_for("history"), depths, args.compact_every):
            h.add_row(str(depth), f"{plain:.3f}", f"{kept:.3f}")
        console.print(h)
    finally:
        if server:
            server.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
