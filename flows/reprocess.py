"""Reprocessing: run exactly the failed items again, by run, error class or language.

Files behind those items are re-probed first (someone may have replaced a bad file); each retry is
a new attempt row, and an item that fails again stays failed with its new reason.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass
from catalogs.ingest import CatalogIngest
from catalogs.manifest import DubManifest
from catalogs.plan import Shard, plan_items
from catalogs.runs import RunLog, new_run_id
from catalogs.settings import Settings
from catalogs.storage import Storage
from flows.dubbing import (RunSummary, dub_shards, failed_shards_message, finish_run, flow_settings, notify,
                           plan_shards)
from tasks.model_store import ensure_base_model


def failed_items(manifest: DubManifest, run_id: str | None, error_class: str | None,
                 language: str | None) -> set[tuple[str, str]]:
    """(video_id, language) items whose latest attempt failed, filtered as asked."""
    latest = manifest.latest(columns=["run_id", "status", "error_class"])
    latest = latest[latest["status"] == "failed"]
    if run_id:
        latest = latest[latest["run_id"] == run_id]
    if error_class:
        latest = latest[latest["error_class"] == error_class]
    if language:
        latest = latest[latest["language"] == language]
    return set(zip(latest["video_id"], latest["language"]))


@task(name="plan-failed", cache_policy=NO_CACHE)
def plan_failed(settings: Settings, run_id: str, from_run: str | None, error_class: str | None,
                language: str | None) -> list[Shard]:
    storage = Storage(settings)
    tables = DeltaTables(storage)
    targets = failed_items(DubManifest(tables), from_run, error_class, language)
    if targets:
        CatalogIngest(storage).refresh(targets)
    base = ensure_base_model(tables, settings)
    shards = plan_shards(plan_items(tables, settings.render_config, retry_failed=True, only=targets,
                                    base_version=base["version"]), settings, None)
    RunLog(tables).start("reprocess", {"run": from_run, "error_class": error_class, "language": language}, run_id)
    get_run_logger().info("reprocessing %d failed items in %d shards", len(targets), len(shards))
    notify("planned", {"items": sum(len(s.items) for s in shards), "shards": len(shards)})
    return shards


@flow(name="reprocess_failed")
def reprocess_failed(root: str | None = None, run: str | None = None, error_class: str | None = None,
                     language: str | None = None, ray_address: str | None = None) -> RunSummary:
    """Re-dub the items whose latest attempt failed (optionally only those of one run, class or language)."""
    started = time.monotonic()
    settings = flow_settings(root=root, ray_address=ray_address)
    if error_class is not None and error_class not in {str(c) for c in ErrorClass}:
        raise ValueError(f"unknown error class {error_class!r}; the classes are: {', '.join(str(c) for c in ErrorClass)}")
    if run and RunLog(DeltaTables(Storage(settings))).get(run) is None:
        raise KeyError(f"run {run!r} is not in manifests/runs")
    run_id = new_run_id("reprocess")
    shards = plan_failed(settings, run_id, run, error_class, language)
    failed_shards = dub_shards(settings, run_id, shards)
    summary = finish_run(settings, "reprocess", run_id, sum(len(s.items) for s in shards), failed_shards, started)
    if failed_shards:
        raise RuntimeError(failed_shards_message(failed_shards))
    return summary
