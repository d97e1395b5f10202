"""One shard's work: track its videos, dub its items on the actor pools, commit its rows.

A plain function (the flows wrap it in a Prefect task with retries and a timeout). It is safe to run
again: items whose ``input_key`` already succeeded are left out, outputs already published are
reused, and the commit is a Delta transaction keyed by (run, shard), so a retried shard never
writes its rows twice.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass
from catalogs.manifest import DubManifest
from catalogs.plan import Shard
from catalogs.registry import ModelRegistry
from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.ray_pools import Pools
from tasks.dub_item import ItemJob, TrackOutcome, output_uri, row


@dataclass
class ShardOutcome:
    shard_id: str
    planned: int
    succeeded: int = 0
    failed: int = 0
    already_done: int = 0                  # succeeded in an earlier attempt of this shard or run
    failures: dict[str, int] = field(default_factory=dict)   # by error class
    version: int | None = None             # manifest version of the commit (None: nothing new)
    seconds: float = 0.0
    video_seconds: float = 0.0             # seconds of source video dubbed


def model_uris(tables: DeltaTables) -> dict[str, str]:
    """Registry version -> URI."""
    return {r["version"]: r["uri"] for r in ModelRegistry(tables).models()}


def worker_error(e: Exception, settings: Settings) -> str:
    if isinstance(e, TimeoutError):
        return f"not finished within the shard timeout ({settings.shard_timeout_s:.0f} s)"
    return f"dubbing worker failed on this item ({settings.item_retries + 1} tries): {e}"


def process_shard(settings: Settings, pools: Pools, run_id: str, shard: Shard,
                  on_item: Callable[[dict], None] | None = None) -> ShardOutcome:
    """Track, dub and commit one shard; items unfinished after ``shard_timeout_s`` fail as ``internal``
    (retried by the next run), the rest of the shard is committed."""
    start = time.perf_counter()
    deadline = time.monotonic() + settings.shard_timeout_s
    storage = Storage(settings)
    tables = DeltaTables(storage)
    manifest = DubManifest(tables)
    if manifest.shard_committed(run_id, shard.shard_id):
        return ShardOutcome(shard.shard_id, len(shard.items), already_done=len(shard.items),
                            seconds=time.perf_counter() - start)
    done = manifest.succeeded_keys()
    items = [it for it in shard.items if it.input_key not in done]
    outcome = ShardOutcome(shard.shard_id, len(shard.items), already_done=len(shard.items) - len(items))
    if not items:
        outcome.seconds = time.perf_counter() - start
        return outcome

    uris = model_uris(tables)
    jobs = [ItemJob(it, run_id, shard.shard_id, uris.get(it.model_version, ""), output_uri(storage, it),
                    settings.render_config) for it in items]

    # 1. Track each video once (a video dubbed into many languages shares one track), while the
    #    dubbing actors load the shard's first model and compile its generator.
    if jobs[0].model_uri:
        pools.dubbing.broadcast("warm", jobs[0].model_uri)
    videos = {it.video_sha256: it.video_uri for it in items}
    shas = list(videos)
    tracked: list[TrackOutcome] = pools.tracking.map(
        "track", [(videos[s], s) for s in shas],
        on_error=lambda i, e: TrackOutcome(shas[i], None, 0.0, error_class=str(ErrorClass.INTERNAL),
                                           error=f"tracking failed: {e}"), deadline=deadline)
    by_sha = dict(zip(shas, tracked))

    # 2. Dub what was tracked; the rest fails with the tracking error.
    rows: list[dict | None] = [None] * len(jobs)
    todo = []
    for k, job in enumerate(jobs):
        tr = by_sha[job.item.video_sha256]
        if tr.error_class:
            rows[k] = row(job, "failed", error_class=tr.error_class, error=tr.error,
                          stage_seconds={"track_s": tr.seconds})
        elif not job.model_uri:
            rows[k] = row(job, "failed", error_class=str(ErrorClass.MODEL_ERROR),
                          error=f"model version {job.item.model_version} is not in the registry")
        else:
            todo.append(k)
    dubbed = pools.dubbing.map(
        "dub", [(jobs[k],) for k in todo],
        on_error=lambda i, e: row(jobs[todo[i]], "failed", error_class=str(ErrorClass.INTERNAL), error=worker_error(e, settings)),
        done=(lambda i, r: on_item(r)) if on_item else None, deadline=deadline)
    for k, r in zip(todo, dubbed):
        r["stage_seconds"] = {"track_s": by_sha[jobs[k].item.video_sha256].seconds, **r["stage_seconds"]}
        rows[k] = r
    if on_item:                          # items that failed before dubbing are done too
        sent = set(todo)
        for k, r in enumerate(rows):
            if k not in sent:
                on_item(r)

    # 3. One atomic commit for the shard.
    final = [r for r in rows if r is not None]
    outcome.version = manifest.commit_shard(run_id, shard.shard_id, final)
    for r in final:
        if r["status"] == "succeeded":
            outcome.succeeded += 1
            outcome.video_seconds += r["qa"].get("video_seconds", 0.0)
        else:
            outcome.failed += 1
    outcome.failures = dict(Counter(r["error_class"] for r in final if r["status"] == "failed"))
    outcome.seconds = time.perf_counter() - start
    return outcome

