"""The Prefect tasks of a dubbing run, shared by the nightly and the reprocessing flows.

Each shard is one Prefect task (retries, timeout) that hands its items to the Ray actor pools and
commits its rows; the work itself is ``infra.shards.process_shard``, a plain function. An item's
failure is a row; a shard task fails only when its commit cannot be made, and then its items are
simply pending for the next run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass, classify
from catalogs.plan import PlannedItem, Shard, make_shards
from catalogs.runs import RunLog
from catalogs.schemas import DUBS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.ray_pools import connect, pool_placements, pools_for
from infra.shards import ShardOutcome, process_shard

# The CLI listens here to drive its progress bar (flows run in its process): ("planned", {"items": n})
# once per run, then ("item", manifest row) per finished item.
listeners: list[Callable[[str, dict], None]] = []


def notify(event: str, payload: dict) -> None:
    for listener in listeners:
        listener(event, payload)


def flow_settings(**overrides) -> Settings:
    """Settings from the environment, with the flow's non-empty parameters on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@dataclass
class RunSummary:
    run_id: str
    kind: str
    status: str
    planned: int
    succeeded: int
    failed: int
    skipped: int
    wall_s: float
    video_seconds: float
    failures: dict[str, int] = field(default_factory=dict)
    # Shards that failed after their retries (their items stay pending): shard id -> error class.
    failed_shards: dict[str, str] = field(default_factory=dict)
    manifest_version: int | None = None
    # Where the actor pools ran at the end of the run: pool, Ray node id and address, pid, resources.
    actors: list[dict] = field(default_factory=list)

    @property
    def realtime_factor(self) -> float:
        return self.video_seconds / self.wall_s if self.wall_s > 0 else 0.0

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "realtime_factor": self.realtime_factor}, sort_keys=True)


@task(name="dub-shard", cache_policy=NO_CACHE, task_run_name="{shard.shard_id}")
def dub_shard(settings: Settings, run_id: str, shard: Shard) -> ShardOutcome:
    outcome = process_shard(settings, pools_for(settings), run_id, shard,
                            on_item=lambda r: notify("item", r))
    get_run_logger().info("shard %s: %d succeeded, %d failed, %d already done in %.1f s", shard.shard_id,
                          outcome.succeeded, outcome.failed, outcome.already_done, outcome.seconds)
    return outcome


def shard_task(settings: Settings):
    """The shard task with its retries and its Prefect timeout: the shard's own deadline
    (``shard_timeout_s``, after which unfinished items fail and the rest is committed) plus the
    commit grace, so that only a shard stuck past its commit is timed out (and retried)."""
    return dub_shard.with_options(retries=settings.shard_retries, retry_delay_seconds=5,
                                  timeout_seconds=settings.shard_timeout_s + settings.shard_commit_grace_s)


def shard_error_class(state) -> ErrorClass:
    """The class of the error a failed shard task ended with (``internal`` when it left none)."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception as e:  # its result could not be read back: say what that was
        error = e
    return classify(error) if isinstance(error, BaseException) else ErrorClass.INTERNAL


def dub_shards(settings: Settings, run_id: str, shards: list[Shard]) -> dict[str, str]:
    """Submit every shard (at most ``shards_in_flight`` at a time); returns the shards that failed
    after their retries, each with the class of its last error."""
    if not shards:
        return {}
    connect(settings)  # from the flow's main thread, before shard threads need the cluster
    task = shard_task(settings)
    running: dict = {}          # future -> shard id
    failed: dict[str, str] = {}

    def collect(done) -> None:
        for f in done:
            shard_id = running.pop(f)
            if f.state.is_failed():
                failed[shard_id] = str(shard_error_class(f.state))

    for shard in shards:
        while len(running) >= settings.shards_in_flight:
            collect(wait(list(running), timeout=1.0).done)
        running[task.submit(settings, run_id, shard)] = shard.shard_id
    collect(wait(list(running)).done)
    return failed


def plan_shards(items: list[PlannedItem], settings: Settings, limit: int | None) -> list[Shard]:
    return make_shards(items[:limit] if limit else items, settings.shard_size)


def failed_shards_message(failed_shards: dict[str, str]) -> str:
    """Why a run failed, naming the error classes (a person reprocesses by class) and the shards."""
    classes = ", ".join(sorted(set(failed_shards.values())))
    return (f"{len(failed_shards)} shard(s) failed after retries [{classes}]; their items stay pending: "
            f"{', '.join(sorted(failed_shards))}")


def finish_run(settings: Settings, kind: str, run_id: str, planned: int, failed_shards: dict[str, str],
               started: float) -> RunSummary:
    """Count the run's rows in the manifest (the truth, whatever the retries did), close the run
    row and publish the Prefect artifact."""
    tables = DeltaTables(Storage(settings))
    rows = tables.read(DUBS_TABLE, columns=["status", "error_class", "qa"], filters=[("run_id", "=", run_id)])
    status = Counter(rows["status"].to_pylist())
    failures = Counter(e for s, e in zip(rows["status"].to_pylist(), rows["error_class"].to_pylist()) if s == "failed")
    seconds = sum(dict(q or []).get("video_seconds", 0.0) for q, s in zip(rows["qa"].to_pylist(), rows["status"].to_pylist())
                  if s == "succeeded")
    ok = not failed_shards
    RunLog(tables).finish(run_id, "succeeded" if ok else "failed", planned, status["succeeded"], status["failed"],
                          status["skipped"])
    summary = RunSummary(run_id, kind, "succeeded" if ok else "failed", planned, status["succeeded"], status["failed"],
                         status["skipped"], time.monotonic() - started, seconds, dict(failures), failed_shards,
                         tables.open(DUBS_TABLE).version(), pool_placements(settings))
    for a in summary.actors:
        get_run_logger().info("%s actor pid %s ran on Ray node %s (%s) with %s", a["pool"], a["pid"], a["node_id"],
                              a["node_ip"], a["resources"])
    create_markdown_artifact(run_report(summary, settings, tables, run_id), key=f"{kind}-run",
                             description=f"resync {kind} run {run_id}")
    return summary


def run_report(summary: RunSummary, settings: Settings, tables: DeltaTables, run_id: str, worst: int = 20) -> str:
    """The run's markdown artifact: counts, throughput, failures by class and the first failures."""
    failed = tables.read(DUBS_TABLE, columns=["video_id", "language", "error_class", "error", "status"],
                         filters=[("run_id", "=", run_id)])
    failed = failed.filter(pc.equal(failed["status"], "failed")).to_pylist()[:worst]
    lines = [f"# resync {summary.kind} run `{run_id}`: {summary.status}", "",
             "| planned | succeeded | failed | wall s | video s dubbed | realtime factor |", "|---|---|---|---|---|---|",
             f"| {summary.planned} | {summary.succeeded} | {summary.failed} | {summary.wall_s:.1f} | "
             f"{summary.video_seconds:.1f} | {summary.realtime_factor:.2f} |", "",
             f"Manifest: `{tables.uri(DUBS_TABLE)}` (version {summary.manifest_version}); "
             f"outputs under `{Storage(settings).uri('outputs')}`."]
    if summary.actors:
        lines += ["", "## Actors", "", "| pool | Ray node | address | pid | resources |", "|---|---|---|---|---|"]
        lines += [f"| {a['pool']} | `{a['node_id'][:12]}` | {a['node_ip']} | {a['pid']} | "
                  f"{', '.join(f'{k}={v:g}' for k, v in sorted(a['resources'].items()))} |" for a in summary.actors]
    if summary.failed_shards:
        shards = ", ".join(f"{k} ({c})" for k, c in sorted(summary.failed_shards.items()))
        lines += ["", f"**Shards that failed after retries** (their items stay pending): {shards}"]
    if summary.failures:
        lines += ["", "## Failures by class", "", "| error class | items |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(summary.failures.items(), key=lambda kv: -kv[1])]
        lines += ["", "## Failed items", "", "| video | language | class | reason |", "|---|---|---|---|"]
        lines += [f"| {r['video_id']} | {r['language']} | {r['error_class']} | {(r['error'] or '').replace('|', '/')[:200]} |"
                  for r in failed]
    return "\n".join(lines)
