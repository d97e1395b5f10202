"""Training jobs over the catalog: fine-tune a speaker model or train a base, publish it under
ROOT/models and return its registry record. Plain functions (the flows run them as Ray tasks, on a
GPU worker when the cluster has one)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from catalogs.registry import ModelRecord
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks import model_store
from tasks.train import TrainingPlan, finetune_plan_for, finetune_speaker, model_card, train_base

log = logging.getLogger(__name__)


def _publish(storage: Storage, model, summary: dict, folder: Path, uri: str, command: str) -> None:
    (folder / "training_log.json").write_text(json.dumps(summary["log"]))
    (folder / "MODEL_CARD.md").write_text(model_card(model, summary, command))
    model_store.publish_model(storage, folder, uri)


def _metrics(summary: dict) -> dict[str, float]:
    s, g = summary["syncformer"], summary["generator"]
    return {"syncformer_val_vertex": float(s["val_vertex_best"]),
            "syncformer_val_opening_corr": float(s.get("val_opening_corr_best", float("nan"))),
            "syncformer_val_opening_ccc": float(s.get("val_opening_ccc_best", float("nan"))),
            "generator_val_lower_psnr": float(g["val_lower_psnr_best"]),
            "syncformer_steps": float(s["steps"]), "generator_steps": float(g["steps"]), "wall_s": float(summary["wall_s"])}


def finetune_job(settings: Settings, speaker_id: str, video_ids: list[str], video_uris: list[str], base_uri: str | None,
                 syncformer_s: float | None = None, generator_s: float | None = None) -> ModelRecord:
    """Fine-tune ``speaker_id``'s model from the base at ``base_uri`` and publish it to
    ROOT/models/speakers/{speaker_id}/{version}."""
    storage = Storage(settings)
    base = model_store.load_model(settings, model_store.local_model_dir(storage, settings, base_uri)) if base_uri else None
    features = model_store.features_for(settings, base) if base else model_store.audio_features(settings)
    plan = finetune_plan_for(base).with_budgets(syncformer_s, generator_s)
    folder = Path(tempfile.mkdtemp(prefix="resync-finetune-"))
    try:
        model, summary = finetune_speaker(storage, settings, base, video_uris, folder, features, speaker_id,
                                          model_store.feature_cache(settings), plan)
        uri = storage.uri("models", "speakers", speaker_id, model.version)
        _publish(storage, model, summary, folder, uri, f"resync run finetune --speaker {speaker_id}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ModelRecord(model_id=f"speaker-{speaker_id}-{model.version}", kind="bundle", speaker_id=speaker_id,
                       version=model.version, uri=uri, parent=base.version if base else None,
                       training_data=list(video_ids), metrics=_metrics(summary))


def train_base_job(settings: Settings, video_ids: list[str], video_uris: list[str], resume_uri: str | None = None,
                   config: str = "cpu", syncformer_s: float | None = None, generator_s: float | None = None,
                   speakers: list[str] | None = None) -> ModelRecord:
    """Train (or continue) a base model over many speakers and publish it to ROOT/models/base/{version}.
    ``speakers`` (one per video) makes validation hold out whole speakers."""
    storage = Storage(settings)
    start = model_store.load_model(settings, model_store.local_model_dir(storage, settings, resume_uri)) if resume_uri else None
    features = model_store.features_for(settings, start) if start else model_store.audio_features(settings)
    plan = TrainingPlan(config=start.config.name if start else config).with_budgets(syncformer_s, generator_s)
    folder = Path(tempfile.mkdtemp(prefix="resync-base-"))
    try:
        model, summary = train_base(storage, settings, video_uris, folder, features, model_store.feature_cache(settings),
                                    plan, resume=start, speakers=speakers)
        uri = storage.uri("models", "base", model.version)
        _publish(storage, model, summary, folder, uri, "resync run train")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ModelRecord(model_id=f"base-{model.config.name}-{model.version}", kind="bundle", version=model.version,
                       uri=uri, parent=start.version if start else None, training_data=list(video_ids),
                       metrics=_metrics(summary))
