"""Per-speaker fine-tuning: gather a speaker's footage from the catalog, fine-tune from the newest
base, register the model. The next nightly run keys that speaker's items on the new version, so
they are dubbed again with it."""

from __future__ import annotations

import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from catalogs.delta import DeltaTables
from catalogs.registry import ModelRecord, ModelRegistry
from catalogs.runs import RunLog, new_run_id
from catalogs.schemas import VIDEOS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from flows.dubbing import flow_settings
from infra.ray_pools import run_training
from tasks.model_jobs import finetune_job
from tasks.model_store import ensure_base_model


def speaker_footage(tables: DeltaTables, speaker_id: str | None, with_speakers: bool = False) -> tuple[list[str], ...]:
    """(video ids, URIs[, speaker ids]) of one speaker's catalog videos (all videos when
    ``speaker_id`` is None)."""
    videos = tables.read(VIDEOS_TABLE, columns=["video_id", "uri", "speaker_id"])
    if speaker_id is not None:
        videos = videos.filter(pc.equal(videos["speaker_id"], speaker_id))
    videos = videos.sort_by("video_id")
    out = (videos["video_id"].to_pylist(), videos["uri"].to_pylist())
    return (*out, videos["speaker_id"].to_pylist()) if with_speakers else out


@task(name="register-model", cache_policy=NO_CACHE)
def register(settings: Settings, record: ModelRecord, run_id: str) -> None:
    tables = DeltaTables(Storage(settings))
    ModelRegistry(tables).register(record)
    RunLog(tables).finish(run_id, "succeeded", 1, 1, 0)
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(record.metrics.items()))
    create_markdown_artifact(f"# model `{record.version}` ({record.model_id})\n\nspeaker: {record.speaker_id or 'base'}; "
                             f"parent: {record.parent}; data: {', '.join(record.training_data)}\n\n`{record.uri}`\n\n"
                             f"| metric | value |\n|---|---|\n{metrics}", key="model", description=record.model_id)


@flow(name="finetune_speaker")
def finetune_speaker(speaker_id: str, root: str | None = None, syncformer_seconds: float | None = None,
                     generator_seconds: float | None = None, ray_address: str | None = None) -> dict:
    """Fine-tune and register ``speaker_id``'s model from the newest base model."""
    settings = flow_settings(root=root, ray_address=ray_address)
    tables = DeltaTables(Storage(settings))
    ids, uris = speaker_footage(tables, speaker_id)
    if not ids:
        raise ValueError(f"speaker {speaker_id!r} has no videos in the catalog")
    base = ensure_base_model(tables, settings)
    run_id = RunLog(tables).start("finetune", {"speaker_id": speaker_id, "videos": ids, "base": base["version"],
                                               "syncformer_seconds": syncformer_seconds,
                                               "generator_seconds": generator_seconds}, new_run_id("finetune"))
    get_run_logger().info("fine-tuning %s on %d videos from base %s", speaker_id, len(ids), base["version"])
    try:
        record = run_training(settings, finetune_job, speaker_id, ids, uris, base["uri"], syncformer_seconds,
                              generator_seconds)
    except Exception:
        RunLog(tables).finish(run_id, "failed", 1, 0, 1)
        raise
    register(settings, record, run_id)
    return record.__dict__
