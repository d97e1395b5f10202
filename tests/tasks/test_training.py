"""Training on one real clip within CPU-minutes: both learned parts must be able to learn it.

The Style-SyncFormer overfits its training frames (vertex error falls at least 5x); the generator,
from random weights, must raise the lower-face PSNR of held-out frames by at least 10 dB in 40
steps. Then the per-speaker path: a fine-tuned model is saved with its lineage and loads back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.config import CPU
from models.resyncer import ModelCard, ReSyncer
from models.train_generator import GeneratorTraining, train_discriminator, train_generator
from models.train_syncformer import SyncFormerTraining, evaluate, normalization, train_syncformer
from tasks import model_store
from tasks.landmarks import LIPS
from tasks.train import (MOUTH, READOUT_MEASURED_COMPONENTS, TrainingPlan, finetune_plan, finetune_speaker,
                         generator_data, model_card, prepare_clip, sequences, train_base)


@pytest.fixture(scope="module")
def clip(media_env):
    settings, storage, data, _ = media_env
    features = model_store.audio_features(settings)
    uri = str(data / "videos" / "speaker_map_5s.mp4")
    return settings, storage, features, uri, prepare_clip(storage, settings, uri, CPU.generator.size, features,
                                                          audio_offsets=CPU.syncformer.audio_offsets)


def test_prepared_clip_is_aligned(clip):
    *_, c = clip
    assert len(c.audio) == len(c.clip) == c.n_frames == 125
    assert c.audio.shape[1] == 384 * len(CPU.syncformer.audio_offsets) and np.isfinite(c.audio).all()
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
                             weight_decay=0.0, style_scale=None)  # capacity, not the regularised recipe
    model.set_normalization(*normalization(seqs))
    before = evaluate(model, seqs, lips, mouth=MOUTH)
    train_syncformer(model, seqs, lips, cfg, set_normalization=False)
    after = evaluate(model, seqs, lips, mouth=MOUTH)
    assert after.vertex < before.vertex / 5, (before, after)
    assert after.opening_corr > 0.8, after  # the training frames' mouth is followed


def test_syncformer_keeps_the_weights_whose_mouth_follows_the_held_out_frames(clip):
    """Model selection is on mouth-opening concordance (the vertex error bottoms out while the model
    still predicts the average face): the restored weights score the best value logged. (Held out
    = the training frames here: 5 s of one speaker is too little to generalise from, and the point
    is which weights are kept.)"""
    *_, c = clip
    torch.manual_seed(0)
    model = ReSyncer.new("cpu").syncformer
    seqs = sequences([c])
    assert all(s.template is not None for s in seqs)
    cfg = SyncFormerTraining(steps=150, lr=1e-3, batch=4, window=48, val_fraction=0.0, eval_every=25, patience=100,
                             style_scale=None)
    summary = train_syncformer(model, seqs, torch.from_numpy(LIPS), cfg, mouth=MOUTH)
    assert summary["selected_by"] == "opening_ccc"
    logged = [e["val_opening_ccc"] for e in summary["log"] if "val_opening_ccc" in e]
    assert summary["val_opening_ccc_best"] == max(logged) > summary["val_opening_ccc_start"] + 0.3
    assert summary["val_opening_corr_best"] >= summary["val_opening_ccc_best"]  # concordance <= correlation
    kept = evaluate(model, seqs, torch.from_numpy(LIPS), mouth=MOUTH)
    assert abs(kept.opening_ccc - summary["val_opening_ccc_best"]) < 1e-5
    # without the mouth vertices it falls back to the vertex error
    plain = train_syncformer(ReSyncer.new("cpu").syncformer, seqs, torch.from_numpy(LIPS),
                             SyncFormerTraining(steps=2, eval_every=1, val_fraction=0.3))
    assert plain["selected_by"] == "vertex"


def test_generator_learns_held_out_mouths(clip):
    *_, c = clip
    torch.manual_seed(0)
    model = ReSyncer.new("cpu")
    data = generator_data([c])
    # 40 steps: measured -2.3 dB at the start, 10.6 after 20 steps, 14.7 after 40 (24.7 after 120, the
    # old length, which cost 80 s of CI more and tested nothing the first 40 do not)
    cfg = GeneratorTraining(steps=40, batch=8, eval_every=20, adv_start=10_000, patience=100, max_eval_frames=32)
    summary = train_generator(model.generator, model.discriminator, data, cfg)
    assert summary["val_lower_psnr_best"] > summary["val_lower_psnr_start"] + 10, summary


def test_a_discriminator_trained_alone_learns_to_tell_drawings_from_frames_and_leaves_the_generator(clip):
    *_, c = clip
    torch.manual_seed(0)
    model = ReSyncer.new("cpu")
    data = generator_data([c])
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    # an untrained generator draws noise: 30 steps take held-out accuracy from about chance to near 1
    cfg = GeneratorTraining(steps=30, batch=4, eval_every=30, max_eval_frames=16, d_lr=2e-3)
    summary = train_discriminator(model.generator, model.discriminator, data, cfg)
    assert summary["steps"] == 30 and summary["val_accuracy_end"] > 0.9 > summary["val_accuracy_start"], summary
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.generator.parameters())   # trainable again afterwards


def test_a_base_carries_the_discriminator_of_its_last_phase_and_its_finetunes_play_it_from_the_first_step(clip, tmp_path):
    """A base saved without D (as the bundled one was) resumed with a D-only phase: the result keeps
    the generator, carries a D of the configuration's shape, and a fine-tune from it trains that D
    from its first step. A fine-tune that never reached its adversarial game keeps no D."""
    from dataclasses import replace

    settings, storage, features, uri, _ = clip
    old_d = replace(CPU.discriminator, channels={k: 2 * v for k, v in CPU.discriminator.channels.items()})
    torch.manual_seed(2)
    old = ReSyncer(replace(CPU, discriminator=old_d), ModelCard(audio_features=features.name))
    old.save(tmp_path / "old", include_discriminator=False)
    old = ReSyncer.load(tmp_path / "old")
    assert not old.discriminator_trained
    plan = TrainingPlan(syncformer=SyncFormerTraining(steps=0, eval_every=1, val_fraction=0.3),
                        generator=GeneratorTraining(steps=0, batch=2, eval_every=1, max_eval_frames=8),
                        discriminator_s=2, readout_components=READOUT_MEASURED_COMPONENTS)
    _, summary = train_base(storage, settings, [uri], tmp_path / "base", features, plan=plan, resume=old)
    base = ReSyncer.load(tmp_path / "base")
    assert base.discriminator_trained and base.config.discriminator == CPU.discriminator
    assert summary["discriminator"]["steps"] >= 1 and summary["generator"]["steps"] == 0
    assert base.card.metrics["discriminator"]["steps"] == summary["discriminator"]["steps"]
    summary["wall_s"] = 1.0
    assert "discriminator kept for fine-tuning" in model_card(base, summary, "cmd")
    assert "| discriminator alone" in model_card(base, summary, "cmd")
    for k, v in old.generator.state_dict().items():
        assert torch.equal(base.generator.state_dict()[k], v), k

    def finetuned(parent: ReSyncer, name: str) -> ReSyncer:
        plan = finetune_plan("cpu", parent.discriminator_trained)   # the recipe, a few steps of it
        plan.syncformer.steps, plan.generator.steps, plan.generator.batch, plan.generator.max_eval_frames = 1, 2, 2, 4
        finetune_speaker(storage, settings, parent, [uri], tmp_path / name, features, "spk-map", plan=plan)
        return ReSyncer.load(tmp_path / name)

    speaker = finetuned(base, "speaker")
    assert speaker.discriminator_trained
    # asked for one, the base fitted a motion read-out as its last step; its speaker models read the audio with it
    assert base.readout is not None and speaker.readout is not None
    for k, v in base.readout.state_dict().items():
        assert torch.equal(speaker.readout.state_dict()[k], v), k
    assert finetuned(old, "speaker-of-old").readout is None
    assert any(not torch.equal(v, base.discriminator.state_dict()[k]) for k, v in speaker.discriminator.state_dict().items())
    assert not finetuned(old, "speaker-of-old").discriminator_trained   # 2 steps, the game joins after 100


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


def test_train_base_with_a_fresh_syncformer_keeps_the_generator(clip, tmp_path):
    """After a change to the SyncFormer's inputs: resume a base whose SyncFormer read one feature
    frame of other audio features, keep its generator, train a new SyncFormer in the current
    configuration on the current features. Without a fresh SyncFormer the other features refuse."""
    from dataclasses import replace

    settings, storage, features, uri, _ = clip
    old_cfg = replace(CPU, syncformer=replace(CPU.syncformer, audio_offsets=(0,), dropout=0.1))
    torch.manual_seed(1)
    old = ReSyncer(old_cfg, ModelCard(audio_features=features.name + "-older"))
    old.save(tmp_path / "old")
    old = ReSyncer.load(tmp_path / "old")
    plan = TrainingPlan(syncformer=SyncFormerTraining(steps=6, eval_every=3, val_fraction=0.3),
                        generator=GeneratorTraining(steps=0, eval_every=1, max_eval_frames=8))
    with pytest.raises(ValueError, match="cannot resume.*older"):
        train_base(storage, settings, [uri], tmp_path / "kept", features, plan=plan, resume=old)
    model, summary = train_base(storage, settings, [uri], tmp_path / "new", features, plan=plan, resume=old,
                                fresh_syncformer=True)
    loaded = ReSyncer.load(tmp_path / "new")
    assert loaded.config.syncformer == CPU.syncformer and loaded.config.generator == old_cfg.generator
    assert loaded.card.parent == old.version and summary["generator"]["steps"] == 0
    assert loaded.card.audio_features == features.name
    for k, v in old.generator.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[k], v), k
    assert loaded.syncformer.audio_in[0].in_features == 384 * len(CPU.syncformer.audio_offsets)
    assert not torch.equal(loaded.syncformer.disp_std, torch.ones_like(loaded.syncformer.disp_std))  # normalised afresh


def test_the_seed_decides_a_fresh_syncformers_first_weights(clip, tmp_path):
    """Two bases of one recipe and seed are the same model; another seed is another (the seed used to
    decide only the batches, so a recipe's fresh Style-SyncFormer could not be trained again)."""
    settings, storage, features, uri, _ = clip
    base = ReSyncer.new("cpu")

    def fresh(seed: int, name: str) -> dict:
        plan = TrainingPlan(syncformer=SyncFormerTraining(steps=0), generator=GeneratorTraining(steps=0, max_eval_frames=4))
        plan.seed = seed
        train_base(storage, settings, [uri], tmp_path / name, features, plan=plan, resume=base, fresh_syncformer=True)
        return ReSyncer.load(tmp_path / name).syncformer.state_dict()

    a, again, other = fresh(0, "a"), fresh(0, "again"), fresh(1, "other")
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


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


def test_a_zero_budget_leaves_that_part_as_it_is():
    plan = TrainingPlan().with_budgets(0, 30)
    assert plan.syncformer.steps == 0 and plan.generator.time_budget_s == 30 and plan.generator.steps > 0
    assert TrainingPlan().with_budgets(None, None).syncformer.steps == TrainingPlan().syncformer.steps


def test_a_model_gets_the_whisper_depth_it_was_trained_on(clip):
    """Features are named by depth; a model trained on Whisper's own output (named as when
    CTranslate2 computed it) gets that extractor whatever the setting, and the default is one block
    earlier."""
    settings, _, features, _, _ = clip
    assert "-skip1-" in features.name and model_store.whisper_skip_blocks(features.name) == 1
    legacy = features.name.replace("-skip1-", "-float32-")
    assert model_store.whisper_skip_blocks(legacy) == 0
    old = ReSyncer.new("cpu", ModelCard(audio_features=legacy))
    assert model_store.features_for(settings, old).name == legacy
    other = ReSyncer.new("cpu", ModelCard(audio_features=features.name.replace("whisper-enc-", "whisper-enc-0")))
    with pytest.raises(Exception, match="trained on audio features"):
        model_store.features_for(settings, other)


def test_validation_holds_out_whole_speakers():
    """A base is selected on people it never trained on: whole speakers (every clip of each) are held
    out, about the asked share of the frames, never all of them, the same for the same seed."""
    from tasks.train import PreparedClip, hold_out_speakers

    def clips():
        return [PreparedClip(f"{s}-{k}.mp4", np.zeros(n), np.zeros((n, 1)), n, speaker=s)
                for s, k, n in [("A", 0, 100), ("A", 1, 100), ("B", 0, 100), ("C", 0, 300), ("D", 0, 400)]]

    a, b = clips(), clips()
    held = hold_out_speakers(a, 0.2, seed=3)
    assert held == hold_out_speakers(b, 0.2, seed=3) and 1 <= len(held) < 4
    for c in a:
        assert c.held_out == (c.speaker in held)
    assert sum(len(c.clip) for c in a if c.held_out) >= 0.2 * 1000
    assert hold_out_speakers(clips(), 0.99, seed=0) != ["A", "B", "C", "D"]   # someone is left to train on
    assert hold_out_speakers(clips(), 0.0, seed=0) == []


def test_generator_and_syncformer_validate_on_the_held_out_speakers(clip):
    """With held-out speakers, the loops' validation is exactly their frames (no time cut), and a
    held-out frame's reference comes from its own clip, as at inference."""
    from models.train_generator import references, split as gen_split
    from models.train_syncformer import split as sync_split

    *_, c = clip
    other = type(c)(c.uri + "#copy", c.clip, c.audio, c.n_frames, speaker="B", held_out=True)
    c2 = type(c)(c.uri, c.clip, c.audio, c.n_frames, speaker="A")
    data = generator_data([c2, other])
    train_idx, val_idx = gen_split(data, 0.3)
    assert set(data.clip[val_idx].tolist()) == {1} and set(data.clip[train_idx].tolist()) == {0}
    refs = references(data, val_idx[:20], torch.Generator().manual_seed(0), val_idx)
    assert (data.clip[refs] == 1).all()
    train, val = sync_split(sequences([c2, other]), 0.3)
    assert sum(len(s.audio) for s in train) == sum(len(s.audio) for s in val) == len(c.clip)


def test_train_base_from_labelled_videos_names_the_held_out_speakers(clip, media_env, tmp_path):
    settings, storage, features, uri, _ = clip
    _, _, data, _ = media_env
    uris = [uri, str(data / "videos" / "speaker_glasses_5s.mp4")]
    plan = TrainingPlan(syncformer=SyncFormerTraining(steps=2, eval_every=1, voice_share=0.5),
                        generator=GeneratorTraining(steps=1, batch=2, eval_every=1, max_eval_frames=8),
                        val_speaker_share=0.3, readout_components=READOUT_MEASURED_COMPONENTS)
    model, summary = train_base(storage, settings, uris, tmp_path / "base", features, plan=plan,
                                speakers=["map", "glasses"])
    assert len(summary["holdout"]["speakers"]) == 1
    # asked to, the base's Style-SyncFormer heard the other voices; the recipe and a speaker's fine-tune do not
    assert summary["syncformer"]["voice_factors"] == [0.9, 1.1] and summary["syncformer"]["voice_share"] == 0.5
    assert plan.heard_voices() == (0.9, 1.1)
    assert TrainingPlan().heard_voices() == () and finetune_plan().heard_voices() == ()
    from tasks.train import model_card

    card = model_card(model, summary, "test")
    assert "held-out speakers" in card and summary["holdout"]["clips"][0] in card
    # the motion read-out is fitted on the training speaker and scored on the held-out one
    assert summary["readout"]["components"] == plan.readout_components and summary["readout"]["val_clips"] == 1
    assert -1 <= summary["readout"]["val_opening_corr"] <= 1 and "| motion read-out" in card
    assert ReSyncer.load(tmp_path / "base").readout.components == plan.readout_components
    assert TrainingPlan().readout_components == 0     # the recipe fits none (measured, not kept)
    with pytest.raises(ValueError, match="speaker labels"):
        train_base(storage, settings, uris, tmp_path / "x", features, plan=plan, speakers=["map"])


def test_a_budget_that_ends_before_the_first_evaluation_still_evaluates_its_last_step(clip):
    """A speaker's short fine-tune may run out of time before the first regular evaluation: its last
    step is evaluated, so what it learnt can be kept (it used to restore the starting weights)."""
    *_, c = clip
    model = ReSyncer.new("cpu")
    sync = train_syncformer(model.syncformer, sequences([c]), torch.from_numpy(LIPS),
                            SyncFormerTraining(steps=1000, eval_every=1000, time_budget_s=0.0, val_fraction=0.3),
                            mouth=MOUTH)
    assert sync["steps"] == 1 and [e["step"] for e in sync["log"] if "val_vertex" in e] == [1]
    gen = train_generator(model.generator, model.discriminator, generator_data([c]),
                          GeneratorTraining(steps=1000, eval_every=1000, time_budget_s=0.0, batch=2, max_eval_frames=4))
    assert gen["steps"] == 1 and [e["step"] for e in gen["log"] if "val_lower_psnr" in e] == [1]


def test_an_asr_model_does_not_change_the_audio_features(tmp_path):
    """RESYNC_ASR_MODEL_DIR is for speech recognition (QA's word error rate): setting it (here to
    another model's folder) leaves the audio features a model was trained on where they were,
    instead of feeding the model another network's states and failing every dub."""
    from catalogs.settings import Settings

    asr = tmp_path / "whisper-small-ct2"
    asr.mkdir()
    plain = Settings(root=str(tmp_path / "root"))
    with_asr = Settings(root=str(tmp_path / "root"), asr_model_dir=str(asr))
    model = model_store.load_model(plain)
    assert model_store.features_for(with_asr, model).name == model_store.features_for(plain, model).name \
        == model.card.audio_features


def test_the_base_model_is_of_the_render_config_or_none_is_used(tmp_path):
    """RESYNC_RENDER_CONFIG picks the configuration of the base that dubs: with no model of that
    configuration registered or bundled (only the cpu base ships), the run is refused with a
    model_error saying how to get one, and nothing is registered under the wrong name."""
    from catalogs.delta import DeltaTables
    from catalogs.errors import ErrorClass, ResyncError
    from catalogs.registry import ModelRegistry
    from catalogs.settings import Settings
    from catalogs.storage import Storage

    full = Settings(root=str(tmp_path / "root"), render_config="full")
    tables = DeltaTables(Storage(full))
    with pytest.raises(ResyncError) as e:
        model_store.ensure_base_model(tables, full)
    assert e.value.error_class == ErrorClass.MODEL_ERROR and "'full'" in e.value.reason and "train" in e.value.reason
    assert ModelRegistry(tables).models() == []
    # the cpu base serves the cpu config; a full run is still refused, not dubbed with it
    cpu = Settings(root=str(tmp_path / "root"))
    assert model_store.ensure_base_model(tables, cpu)["uri"] == f"{model_store.BUNDLED_SCHEME}base-cpu"
    with pytest.raises(ResyncError, match="'full'"):
        model_store.ensure_base_model(tables, full)


def test_the_configured_model_dir_is_the_base_even_once_another_is_registered(tmp_path):
    """RESYNC_MODEL_DIR names the base to dub with: a root that already registered the bundled base
    switches to the configured folder's model (registered under its version), and plans with it."""
    from catalogs.delta import DeltaTables
    from catalogs.plan import plan_items
    from catalogs.registry import ModelRegistry
    from catalogs.settings import Settings
    from catalogs.storage import Storage

    plain = Settings(root=str(tmp_path / "root"))
    tables = DeltaTables(Storage(plain))
    bundled = model_store.ensure_base_model(tables, plain)["version"]
    mine = ReSyncer.load(model_store.BUNDLED_BASE)
    with torch.no_grad():
        mine.generator.to_rgb1.bias += 0.01
    version = mine.save(tmp_path / "my-base", include_discriminator=False)
    configured = Settings(root=str(tmp_path / "root"), model_dir=str(tmp_path / "my-base"))
    base = model_store.ensure_base_model(tables, configured)
    assert base["version"] == version != bundled and base["uri"] == str((tmp_path / "my-base").resolve())
    assert model_store.ensure_base_model(tables, configured)["version"] == version      # registered once
    assert len([m for m in ModelRegistry(tables).models() if m["version"] == version]) == 1


def test_a_zero_budget_takes_no_step_and_still_measures(clip):
    """``--syncformer-seconds 0`` (keep a resumed model's Style-SyncFormer) used to divide by zero
    in the learning-rate schedule before the first step."""
    *_, c = clip
    model = ReSyncer.new("cpu")
    before = {k: v.clone() for k, v in model.syncformer.state_dict().items()}
    sync = train_syncformer(model.syncformer, sequences([c]), torch.from_numpy(LIPS),
                            SyncFormerTraining(steps=0, time_budget_s=0.0, val_fraction=0.3), set_normalization=False,
                            mouth=MOUTH)
    assert sync["steps"] == 0 and sync["val_vertex_best"] == sync["val_vertex_start"]
    assert all(torch.equal(v, model.syncformer.state_dict()[k]) for k, v in before.items())


def test_the_generator_trains_and_is_scored_under_a_dubs_widened_masks(clip):
    """A dub masks the tracked and the planned lower face together; with ``jaw_share`` some training
    samples are masked that way, and held-out frames are scored (and selected) under it, with the
    own-mask numbers kept beside them."""
    from models.train_generator import widened_masks

    *_, c = clip
    data = generator_data([c])
    i, other = torch.tensor([0, 1]), torch.tensor([len(data) - 1, len(data) - 2])
    masks = data.masks[i]
    joined = widened_masks(data, masks, other)
    assert torch.equal(joined, torch.maximum(masks, data.masks[other]))
    picked = widened_masks(data, masks, other, torch.tensor([True, False]))
    assert torch.equal(picked[0], joined[0]) and torch.equal(picked[1], masks[1])
    model = ReSyncer.new("cpu")
    gen = train_generator(model.generator, model.discriminator, data,
                          GeneratorTraining(steps=2, eval_every=1, batch=2, max_eval_frames=4, jaw_share=1.0,
                                            val_fraction=0.3))
    assert gen["val_widened_masks"] and gen["val_own_mask_psnr_start"] != gen["val_lower_psnr_start"]
    assert np.isfinite(gen["val_own_mask_psnr_best"])
    from tasks.train import model_card

    sync = {"steps": 0, "seconds": 0.0, "val_vertex_start": 1e-3, "val_vertex_best": 1e-3}
    card = model_card(model, {"syncformer": sync, "generator": gen, "wall_s": 1.0}, "test")
    assert "masked as a dub masks it" in card and f"{gen['val_own_mask_psnr_best']:.2f}" in card


def test_the_held_out_speakers_do_not_follow_the_training_seed(clip, media_env, tmp_path):
    """Members of an ensemble train with other seeds and must be selected on the same people."""
    from tasks.train import held_out_speakers

    settings, storage, features, uri, _ = clip
    _, _, data, _ = media_env
    uris = [uri, str(data / "videos" / "speaker_glasses_5s.mp4")]
    frames = {"map": 1, "glasses": 1}
    seed = next(s for s in range(1, 50) if held_out_speakers(frames, 0.3, s) != held_out_speakers(frames, 0.3, 0))
    held = []
    for s in (0, seed):
        plan = TrainingPlan(syncformer=SyncFormerTraining(steps=1, eval_every=1),
                            generator=GeneratorTraining(steps=0, eval_every=1, max_eval_frames=8), val_speaker_share=0.3)
        plan.seed = plan.syncformer.seed = plan.generator.seed = s
        _, summary = train_base(storage, settings, uris, tmp_path / f"s{s}", features, plan=plan,
                                speakers=["map", "glasses"])
        held.append(summary["holdout"]["speakers"])
    assert held[0] == held[1]


def test_a_clips_perturbed_voices_say_the_same_thing_at_the_same_frames(clip):
    """``voice_factors`` adds the track's tokens in other voices at the same video frames: factor 1 is
    the track itself, 1.1 a higher voice whose tokens still follow the real ones over time; training
    windows hear them at the recipe's share, validation never does."""
    from models.train_syncformer import _voiced

    settings, storage, features, uri, c = clip
    v = prepare_clip(storage, settings, uri, CPU.generator.size, features, audio_offsets=CPU.syncformer.audio_offsets,
                     voice_factors=(1.0, 1.1))
    assert v.voices.shape == (2, *c.audio.shape)
    assert np.allclose(v.voices[0], c.audio, atol=1e-5)
    other = v.voices[1]
    assert not np.allclose(other, c.audio, atol=1e-2)
    # each channel's course over the clip agrees with the real voice's (the words sit at the same frames)
    a, b = c.audio - c.audio.mean(0), other - other.mean(0)
    per_channel = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-12)
    assert np.median(per_channel) > 0.6, np.median(per_channel)
    seq = sequences([v])[0]
    window = seq.part(10, 42)
    assert window.voices.shape == (2, 32, c.audio.shape[1])
    gen = torch.Generator().manual_seed(0)
    assert _voiced(window, 0.0, gen) is window
    heard = [_voiced(window, 1.0, gen) for _ in range(8)]
    assert all(h.voices is None and torch.equal(h.disp, window.disp) for h in heard)
    assert any(torch.equal(h.audio, window.voices[1]) for h in heard)
