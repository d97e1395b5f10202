"""Training on one real clip within CPU-minutes: both learned parts must be able to learn it.

The Style-SyncFormer overfits its training frames (vertex error falls at least 5x); the generator,
from random weights, must raise the lower-face PSNR of held-out frames by at least 6 dB. Then the
per-speaker path: a fine-tuned model is saved with its lineage and loads back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.config import CPU
from models.resyncer import ModelCard, ReSyncer
from models.train_generator import GeneratorTraining, train_generator
from models.train_syncformer import SyncFormerTraining, evaluate, normalization, train_syncformer
from tasks import model_store
from tasks.landmarks import LIPS
from tasks.train import TrainingPlan, finetune_speaker, generator_data, prepare_clip, sequences


@pytest.fixture(scope="module")
def clip(media_env):
    settings, storage, data, _ = media_env
    features = model_store.audio_features(settings)
    uri = str(data / "videos" / "speaker_map_5s.mp4")
    return settings, storage, features, uri, prepare_clip(storage, settings, uri, CPU.generator.size, features)


def test_prepared_clip_is_aligned(clip):
    *_, c = clip
    assert len(c.audio) == len(c.clip) == c.n_frames == 125
    assert c.audio.shape[1] == 384 and np.isfinite(c.audio).all()
    assert c.clip.crops.shape == (125, 128, 128, 3) and np.isfinite(c.clip.disp).all()
    # the mouth sits low in the aligned crop, the eyes above it
    mouth_y, eye_y = c.clip.verts[:, LIPS, 1].mean(), c.clip.verts[:, [33, 263], 1].mean()
    assert 0.55 * 128 < mouth_y < 0.95 * 128 and eye_y < mouth_y - 20


def test_syncformer_overfits_one_clip(clip):
    *_, c = clip
    torch.manual_seed(0)
    model = ReSyncer.new("cpu").syncformer
    seqs = sequences([c])
    lips = torch.from_numpy(LIPS)
    cfg = SyncFormerTraining(steps=400, lr=1e-3, batch=4, window=64, val_fraction=0.0, eval_every=100, patience=100,
                             weight_decay=0.0)
    model.set_normalization(*normalization(seqs))
    before = evaluate(model, seqs, lips)
    train_syncformer(model, seqs, lips, cfg, set_normalization=False)
    after = evaluate(model, seqs, lips)
    assert after < before / 5, (before, after)


def test_generator_learns_held_out_mouths(clip):
    *_, c = clip
    torch.manual_seed(0)
    model = ReSyncer.new("cpu")
    data = generator_data([c])
    cfg = GeneratorTraining(steps=120, batch=8, eval_every=40, adv_start=10_000, patience=100, max_eval_frames=32)
    summary = train_generator(model.generator, model.discriminator, data, cfg)
    assert summary["val_lower_psnr_best"] > summary["val_lower_psnr_start"] + 6, summary


def test_finetune_records_lineage(clip, tmp_path):
    settings, storage, features, uri, _ = clip
    base = ReSyncer.new("cpu", ModelCard(audio_features=features.name))
    base.save(tmp_path / "base")
    base = ReSyncer.load(tmp_path / "base")
    plan = TrainingPlan(syncformer=SyncFormerTraining(steps=4, eval_every=2), generator=GeneratorTraining(steps=2, batch=2, eval_every=1))
    model, summary = finetune_speaker(storage, settings, base, [uri], tmp_path / "speaker", features, "spk-map",
                                      plan=plan)
    loaded = ReSyncer.load(tmp_path / "speaker")
    assert loaded.card.kind == "speaker" and loaded.card.speaker_id == "spk-map"
    assert loaded.card.parent == base.version and loaded.version == model.version != base.version
    assert summary["syncformer"]["steps"] >= 2


def test_a_replaced_bundled_base_is_registered_under_its_new_version(tmp_path):
    """A root registered the bundled base when it held other weights (an older release): the
    registry's newest base becomes the bundled folder's current version, so dubs are credited to the
    weights that made them; an unchanged bundle is not registered twice."""
    from catalogs.delta import DeltaTables
    from catalogs.registry import ModelRecord, ModelRegistry
    from catalogs.settings import Settings
    from catalogs.storage import Storage

    settings = Settings(root=str(tmp_path / "root"))
    tables = DeltaTables(Storage(settings))
    registry = ModelRegistry(tables)
    registry.register(ModelRecord(model_id="base-cpu-old", kind="bundle", version="0123456789abcdef",
                                  uri=f"{model_store.BUNDLED_SCHEME}base-cpu"))
    current = model_store.ensure_base_model(tables, settings)
    bundled = model_store.load_model(settings).version
    assert current["version"] == bundled != "0123456789abcdef" and current["uri"] == f"{model_store.BUNDLED_SCHEME}base-cpu"
    assert model_store.ensure_base_model(tables, settings)["version"] == bundled
    assert len(registry.models()) == 2
    # the same for the folder registered by path (older releases did so), in another root
    other = DeltaTables(Storage(Settings(root=str(tmp_path / "other"))))
    ModelRegistry(other).register(ModelRecord(model_id="by-path", kind="bundle", version="fedcba9876543210",
                                              uri=str(model_store.BUNDLED_BASE)))
    assert model_store.ensure_base_model(other, settings)["version"] == bundled
