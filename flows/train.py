"""Base-model training over the catalog: every speaker's videos pooled, registered as the new base."""

from __future__ import annotations

from prefect import flow

from catalogs.delta import DeltaTables
from catalogs.runs import RunLog, new_run_id
from catalogs.storage import Storage
from flows.dubbing import flow_settings
from flows.finetune import register, speaker_footage
from infra.ray_pools import run_training
from tasks.model_jobs import train_base_job
from tasks.model_store import ensure_base_model


@flow(name="train_base")
def train_base(root: str | None = None, video_ids: list[str] | None = None, resume: bool = True,
               syncformer_seconds: float | None = None, generator_seconds: float | None = None,
               ray_address: str | None = None) -> dict:
    """Train a base model over the catalog's videos (or the listed ones), continuing from the newest
    base unless ``resume`` is off, and register it: every item is then dubbed again with it."""
    settings = flow_settings(root=root, ray_address=ray_address)
    tables = DeltaTables(Storage(settings))
    ids, uris, speakers = speaker_footage(tables, None, with_speakers=True)
    if video_ids:
        wanted = set(video_ids)
        keep = [k for k, i in enumerate(ids) if i in wanted]
        ids, uris, speakers = [ids[k] for k in keep], [uris[k] for k in keep], [speakers[k] for k in keep]
    if not ids:
        raise ValueError("no catalog videos to train on")
    start = ensure_base_model(tables, settings) if resume else None
    run_id = RunLog(tables).start("train", {"videos": ids, "resume": start["version"] if start else None,
                                            "syncformer_seconds": syncformer_seconds,
                                            "generator_seconds": generator_seconds}, new_run_id("train"))
    try:
        record = run_training(settings, train_base_job, ids, uris, start["uri"] if start else None,
                              settings.render_config, syncformer_seconds, generator_seconds, speakers)
    except Exception:
        RunLog(tables).finish(run_id, "failed", 1, 0, 1)
        raise
    register(settings, record, run_id)
    return record.__dict__
