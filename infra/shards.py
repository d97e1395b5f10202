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
from catalogs.schemas import VIDEOS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.ray_pools import Calls, Pools, drive
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


def frame_sizes(tables: DeltaTables, video_ids: set[str]) -> list[tuple[int, int]]:
    """(width, height) of these catalog videos, as probed at ingest (the generator's batch for a
    video follows from its frame size)."""
    if not tables.exists(VIDEOS_TABLE):
        return []
    videos = tables.read(VIDEOS_TABLE, columns=["video_id", "width", "height"]).to_pylist()
    return sorted({(int(v["width"]), int(v["height"])) for v in videos
                   if v["video_id"] in video_ids and v["width"] and v["height"]})


def worker_error(e: Exception, settings: Settings) -> str:
    if isinstance(e, TimeoutError):
        return f"not finished within the shard timeout ({settings.shard_timeout_s:.0f} s)"
    return f"dubbing worker failed on this item ({settings.item_retries + 1} tries): {e}"


class ShardPipeline:
    """A shard's jobs through both pools in one loop: every video is queued for tracking up front,
    and each video's items go to the dubbing pool as soon as its track is ready. Items of a video
    that could not be tracked fail with the tracking error; those whose model is not in the
    registry fail as ``model_error``. ``on_item`` gets each row as it is final."""

    def __init__(self, settings: Settings, pools: Pools, jobs: list[ItemJob],
                 on_item: Callable[[dict], None] | None = None) -> None:
        self.settings, self.jobs, self.on_item = settings, jobs, on_item
        self.rows: list[dict | None] = [None] * len(jobs)
        self.videos: dict[str, list[int]] = {}            # video sha256 -> indexes of its jobs
        for k, job in enumerate(jobs):
            self.videos.setdefault(job.item.video_sha256, []).append(k)
        self.track_s: dict[str, float] = {}
        self.tracking = Calls(pools.tracking, "track", self.track_failed, self.tracked)
        self.dubbing = Calls(pools.dubbing, "dub", self.dub_failed, self.dubbed)

    def run(self, deadline: float | None) -> list[dict | None]:
        """The rows, in the jobs' order."""
        for sha, ks in self.videos.items():
            self.tracking.add(sha, self.jobs[ks[0]].item.video_uri, sha)
        drive([self.tracking, self.dubbing], deadline)
        return self.rows

    def track_failed(self, sha: str, e: Exception) -> TrackOutcome:
        return TrackOutcome(sha, None, 0.0, error_class=str(ErrorClass.INTERNAL), error=f"tracking failed: {e}")

    def dub_failed(self, k: int, e: Exception) -> dict:
        return row(self.jobs[k], "failed", error_class=str(ErrorClass.INTERNAL), error=worker_error(e, self.settings))

    def tracked(self, sha: str, tr: TrackOutcome) -> None:
        self.track_s[sha] = tr.seconds
        for k in self.videos[sha]:
            job = self.jobs[k]
            if tr.error_class:
                self.finish(k, row(job, "failed", error_class=tr.error_class, error=tr.error,
                                   stage_seconds={"track_s": tr.seconds}))
            elif not job.model_uri:
                self.finish(k, row(job, "failed", error_class=str(ErrorClass.MODEL_ERROR),
                                   error=f"model version {job.item.model_version} is not in the registry"))
            else:
                self.dubbing.add(k, job)

    def dubbed(self, k: int, r: dict) -> None:
        """A dubbing result, with its video's ``track_s`` and ``queue_s``: the seconds the item waited,
        once its video was tracked, for the pool to hand it a free dubbing actor (not counting what it
        may then wait on that actor behind the warm-up call)."""
        waited = {"queue_s": self.dubbing.waited[k]} if k in self.dubbing.waited else {}
        r["stage_seconds"] = {"track_s": self.track_s[self.jobs[k].item.video_sha256], **waited, **r["stage_seconds"]}
        self.finish(k, r)

    def finish(self, k: int, r: dict) -> None:
        self.rows[k] = r
        if self.on_item:
            self.on_item(r)


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

    # Track each video once (a video dubbed into many languages shares one track), while the dubbing
    # actors load the shard's first model and compile its generator for the batches of the shard's
    # frame sizes; a video's items are dubbed as soon as its track is ready, while the next videos
    # are still being tracked.
    if jobs[0].model_uri:
        pools.dubbing.broadcast("warm", jobs[0].model_uri, frame_sizes(tables, {it.video_id for it in items}))
    rows = ShardPipeline(settings, pools, jobs, on_item).run(deadline)

    # One atomic commit for the shard.
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

