"""The nightly localization run: dub every (video, language) whose inputs have no success yet."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from catalogs.delta import DeltaTables
from catalogs.personalization import speakers_due
from catalogs.plan import Shard, plan_items
from catalogs.registry import ModelRegistry
from catalogs.runs import RunLog, new_run_id
from catalogs.settings import Settings
from catalogs.storage import Storage
from flows.dubbing import (RunSummary, dub_shards, failed_shards_message, finish_run, flow_settings, notify,
                           plan_shards)
from infra.ray_pools import run_training
from tasks.model_jobs import finetune_job
from tasks.model_store import ensure_base_model


@task(name="personalize", cache_policy=NO_CACHE)
def personalize(settings: Settings) -> list[dict]:
    """Fine-tune and register a model for every speaker due one (``personalize_min_footage_s`` of
    footage, no model from the current base), before planning, so that their items dub with it. A
    failed fine-tune is logged and recorded; that speaker dubs with the base."""
    tables = DeltaTables(Storage(settings))
    base = ensure_base_model(tables, settings)
    done = []
    for due in speakers_due(tables, base["version"], settings.personalize_min_footage_s):
        started = time.monotonic()
        entry = {"speaker_id": due.speaker_id, "videos": len(due.video_ids), "footage_s": round(due.footage_s, 1)}
        try:
            record = run_training(settings, finetune_job, due.speaker_id, due.video_ids, due.uris, base["uri"],
                                  settings.personalize_syncformer_s, settings.personalize_generator_s)
            ModelRegistry(tables).register(record)
            entry["version"] = record.version
        except Exception as e:  # one speaker's fine-tune never stops the night's dubbing
            get_run_logger().warning("speaker model for %s failed: %s", due.speaker_id, e)
            entry["error"] = f"{type(e).__name__}: {e}"[:500]
        entry["seconds"] = round(time.monotonic() - started, 1)
        get_run_logger().info("speaker model for %s: %s", due.speaker_id, entry)
        done.append(entry)
    return done


@task(name="plan", cache_policy=NO_CACHE)
def plan(settings: Settings, run_id: str, languages: list[str] | None, limit: int | None,
         personalized: list[dict] | None = None) -> list[Shard]:
    """Pending items (only input keys without a success), in deterministic shards; records the run
    (with the speaker models it made first and what they cost)."""
    tables = DeltaTables(Storage(settings))
    base = ensure_base_model(tables, settings)
    items = plan_items(tables, settings.render_config, languages, max_attempts=settings.max_attempts,
                       base_version=base["version"])
    shards = plan_shards(items, settings, limit)
    RunLog(tables).start("nightly", {"languages": languages, "limit": limit, "shard_size": settings.shard_size,
                                     "render_config": settings.render_config, "personalized": personalized or []}, run_id)
    get_run_logger().info("run %s: %d pending items in %d shards", run_id, sum(len(s.items) for s in shards), len(shards))
    notify("planned", {"items": sum(len(s.items) for s in shards), "shards": len(shards)})
    return shards


@flow(name="nightly_localization")
def nightly_localization(root: str | None = None, languages: list[str] | None = None, shard_size: int | None = None,
                         limit: int | None = None, ray_address: str | None = None) -> RunSummary:
    """Plan, fan the shards out to the Ray actor pools, commit each shard, report."""
    started = time.monotonic()
    settings = flow_settings(root=root, shard_size=shard_size, ray_address=ray_address)
    run_id = new_run_id("nightly")
    personalized = personalize(settings) if settings.personalize_min_footage_s > 0 else []
    shards = plan(settings, run_id, languages, limit, personalized)
    failed_shards = dub_shards(settings, run_id, shards)
    summary = finish_run(settings, "nightly", run_id, sum(len(s.items) for s in shards), failed_shards, started)
    if failed_shards:
        raise RuntimeError(failed_shards_message(failed_shards))
    return summary
