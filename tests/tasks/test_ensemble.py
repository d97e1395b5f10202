"""Assembling a base whose Style-SyncFormer averages members trained apart (tasks/ensemble.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.config import CPU, replace
from models.resyncer import ModelCard, ReSyncer
from models.syncformer import SyncFormerEnsemble
from tasks import model_store
from tasks.ensemble import ensemble_base, ensemble_card, ensemble_model


def model_reading(features: str, seed: int, cfg=CPU) -> ReSyncer:
    torch.manual_seed(seed)
    m = ReSyncer(cfg, ModelCard(audio_features=features))
    torch.nn.init.normal_(m.syncformer.head.weight, std=0.01)   # members that predict something, and differ
    return m.eval()


def test_members_must_read_what_the_base_reads():
    base = model_reading("whisper-a", 0)
    with pytest.raises(ValueError, match="audio features"):
        ensemble_model(base, [model_reading("whisper-b", 1)])
    other = replace(CPU, syncformer=replace(CPU.syncformer, d_model=64))
    with pytest.raises(ValueError, match="configured unlike"):
        ensemble_model(base, [model_reading("whisper-a", 1, other)])


def test_an_ensembles_members_join_one_by_one():
    """Members of an ensemble that joins another are taken one by one, not nested."""
    pair = ensemble_model(model_reading("f", 0), [model_reading("f", 1)], "float32")
    three = ensemble_model(pair, [model_reading("f", 2)], "float32")
    assert three.config.syncformer.members == 3 and len(three.syncformer.members) == 3
    for a, b in zip(three.syncformer.members[0].parameters(), pair.syncformer.members[0].parameters()):
        assert torch.equal(a, b)


def test_an_assembled_base_is_scored_on_the_held_out_speakers_and_saved_at_half_precision(media_env, tmp_path):
    settings, storage, data, _ = media_env
    features = model_store.audio_features(settings)
    uris = [str(data / "videos" / "speaker_map_5s.mp4"), str(data / "videos" / "speaker_glasses_5s.mp4")]
    base, members = model_reading(features.name, 0), [model_reading(features.name, s) for s in (1, 2)]
    model, summary = ensemble_base(storage, settings, base, members, tmp_path / "ens", features,
                                   model_store.feature_cache(settings), uris, ["map", "glasses"])
    assert summary["members"] == [base.version, *(m.version for m in members)]
    assert len(summary["held_out_speakers"]) == 1
    scores = summary["scores"]
    assert list(scores) == ["member 0", "member 1", "member 2", "average"]
    assert all(np.isfinite(s["vertex"]) for s in scores.values())
    # the average of three differing members is not any one of them
    assert len({round(s["vertex"], 9) for s in scores.values()}) == 4

    loaded = ReSyncer.load(tmp_path / "ens")
    assert isinstance(loaded.syncformer, SyncFormerEnsemble) and loaded.config.weights_dtype == "float16"
    assert loaded.version == model.version and loaded.card.parent == base.version
    for k, v in base.generator.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[k], v.half().float()), k
    card = ensemble_card(loaded, summary, "resync model ensemble test")
    assert "| average |" in card and summary["held_out_speakers"][0] in card


def test_the_ensemble_command_writes_a_base_and_its_card(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    for seed in (0, 1):
        model_reading("whisper-test", seed).save(tmp_path / f"m{seed}", include_discriminator=False)
    runner = CliRunner()
    r = runner.invoke(app, ["model", "ensemble", str(tmp_path / "m1"), "--base", str(tmp_path / "m0"),
                            "-o", str(tmp_path / "ens"), "--weights-dtype", "float32", "--root", str(tmp_path / "root")])
    assert r.exit_code == 0, r.output
    loaded = ReSyncer.load(tmp_path / "ens")
    assert loaded.config.syncformer.members == 2 and loaded.config.weights_dtype == "float32"
    card = (tmp_path / "ens" / "MODEL_CARD.md").read_text()
    assert "Assembled with" in card and "Not scored on held-out speakers" in card
    r = runner.invoke(app, ["model", "ensemble", str(tmp_path / "m1"), "--base", str(tmp_path / "m0"),
                            "-o", str(tmp_path / "bad"), "--weights-dtype", "int8", "--root", str(tmp_path / "root")])
    assert r.exit_code == 2 and "float16 or float32" in r.output
    assert not (tmp_path / "bad").exists()
