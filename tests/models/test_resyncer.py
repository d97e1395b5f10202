"""The ReSyncer bundle: one versioned checkpoint for both learned parts, and windowed inference."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.config import CPU, replace
from models.resyncer import ModelCard, ReSyncer


def small(seed: int = 0) -> ReSyncer:
    cfg = replace(CPU, syncformer=replace(CPU.syncformer, audio_dim=16, audio_offsets=(0,), d_model=32, heads=2, max_frames=40, dropout=0.0),
                  generator=replace(CPU.generator, size=32), discriminator=replace(CPU.discriminator, size=32))
    torch.manual_seed(seed)
    model = ReSyncer(cfg, ModelCard(audio_features="logmel-test"))
    torch.nn.init.normal_(model.syncformer.head.weight, std=0.05)  # a non-trivial output
    return model.eval()


def test_round_trip_is_bit_exact_and_keeps_the_card(tmp_path):
    model = small()
    version = model.save(tmp_path / "m")
    loaded = ReSyncer.load(tmp_path / "m")
    assert loaded.version == version and loaded.card.audio_features == "logmel-test"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    # the version is the content: saving again gives the same one, any change gives another
    assert model.save(tmp_path / "again") == version
    with torch.no_grad():
        model.generator.to_rgb1.bias += 1
    assert model.save(tmp_path / "changed") != version


def test_without_discriminator_still_loads(tmp_path):
    """An inference-only checkpoint (no discriminator) loads with the same generator and
    Style-SyncFormer weights, and its version is the content it holds, not the full model's."""
    model = small()
    version = model.save(tmp_path / "m", include_discriminator=False)
    loaded = ReSyncer.load(tmp_path / "m")
    assert loaded.version == version != model.save(tmp_path / "full")
    for part in ("syncformer", "generator"):
        for (k, a), b in zip(getattr(model, part).state_dict().items(), getattr(loaded, part).state_dict().values()):
            assert torch.equal(a, b), f"{part}.{k}"


def test_a_pickle_is_refused(tmp_path):
    folder = tmp_path / "evil"
    small().save(folder)
    (folder / "model.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        ReSyncer.load(folder)


def test_long_audio_runs_in_crossfaded_windows():
    model = small()
    audio = torch.randn(130, 16)
    style = model.style_code(torch.randn(50, 478, 3) * 0.01)
    long = model.displacements(audio, style)
    assert long.shape == (130, 478, 3) and torch.isfinite(long).all()
    # inside the first window, away from its overlap, the result equals a single pass over that window
    first = model.displacements(audio[:40], style)
    assert torch.allclose(long[:25], first[:25], atol=1e-5)
    # no step at the joins: frame-to-frame change at a join is like elsewhere
    steps = (long[1:] - long[:-1]).norm(dim=(1, 2))
    assert steps.max() < 6 * steps.median()


def whole_video_crossfade(model: ReSyncer, audio: torch.Tensor, style: torch.Tensor, overlap: int = 32) -> torch.Tensor:
    """The cross-fade as it was written before it streamed: every window added into one (T, V, 3)."""
    limit = model.config.syncformer.max_frames
    overlap, t = min(overlap, limit // 4), len(audio)
    hop = limit - overlap
    out, weight = torch.zeros(t, 478, 3), torch.zeros(t)
    ramp = (torch.arange(overlap) + 1.0) / (overlap + 1.0)
    starts = list(range(0, max(t - limit, 0) + hop, hop))
    for k, s in enumerate(starts):
        e = min(s + limit, t)
        with torch.no_grad():
            pred = model.syncformer(audio[s:e][None], style[None])[0]
        w = torch.ones(e - s)
        if k > 0:
            w[:overlap] *= ramp[: e - s]
        if k < len(starts) - 1 and e - s > overlap:
            w[-overlap:] *= ramp.flip(0)
        out[s:e] += w[:, None, None] * pred
        weight[s:e] += w
    return out.div_(weight.clamp_min(1e-6)[:, None, None])


@pytest.mark.parametrize("frames", [41, 70, 130, 151])
def test_streamed_windows_equal_the_whole_video_crossfade_exactly(frames):
    """The blocks come out in order, cover every frame once, hold at most a window, and are
    bit-identical to cross-fading into one whole-video array."""
    model = small()
    audio = torch.randn(frames, 16)
    style = model.style_code(torch.randn(50, 478, 3) * 0.01)
    blocks = list(model.displacement_blocks(lambda s, e: audio[s:e], frames, style))
    assert [s for s, _ in blocks] == list(np.cumsum([0] + [len(b) for _, b in blocks[:-1]]))
    assert max(len(b) for _, b in blocks) <= model.config.syncformer.max_frames
    assert torch.equal(torch.cat([b for _, b in blocks]), whole_video_crossfade(model, audio, style))


def test_render_shapes_and_range():
    model = small()
    codes = model.reference_codes(torch.rand(3, 32, 32) * 2 - 1)
    out = model.render(torch.rand(4, 1, 32, 32), torch.rand(4, 3, 32, 32) * 2 - 1, codes)
    assert out.shape == (4, 3, 32, 32) and out.min() >= -1 and out.max() <= 1


def test_one_style_for_the_batch_folds_into_the_weights_exactly():
    """Inference passes one W+ for all frames; the folded convolution must equal the per-sample one."""
    g = small().generator
    codes = g.encode_reference(torch.rand(1, 3, 32, 32) * 2 - 1)
    feats = g.guide_encoder(torch.rand(3, 4, 32, 32) * 2 - 1)
    with torch.no_grad():
        folded, per_sample = g.synthesize(feats, codes), g.synthesize(feats, codes.expand(3, -1, -1))
    assert torch.allclose(folded, per_sample, atol=1e-5)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[ReSyncer, Path]:
    """small()'s generator compiled ahead of time (batch 8) into a package folder, and the model that
    compiled it: compiling is most of the time of the tests below, so they share one compile."""
    folder = tmp_path_factory.mktemp("compiled")
    model = small()
    model.compile_cache_dir = str(folder)
    codes = model.reference_codes(torch.rand(3, 32, 32) * 2 - 1)
    model.render(torch.rand(8, 1, 32, 32), torch.rand(8, 3, 32, 32) * 2 - 1, codes, compiled=True, batch=8)
    assert not model._compile_failed
    return model, folder


def test_compiled_render_matches_eager_pads_and_splits_batches_and_is_shared_across_weights(compiled):
    """The ahead-of-time package: compiled once, matching eager on short (padded) and long (split)
    batches; a model with other weights loads the same package with its own weights."""
    model, folder = compiled
    codes = model.reference_codes(torch.rand(3, 32, 32) * 2 - 1)
    mesh, masked = torch.rand(11, 1, 32, 32), torch.rand(11, 3, 32, 32) * 2 - 1
    eager = model.render(mesh, masked, codes)
    compiled = model.render(mesh, masked, codes, compiled=True, batch=8)   # 8 + 3 padded to 8
    assert compiled.shape == eager.shape and not model._compile_failed
    assert torch.allclose(compiled, eager, atol=1e-4)
    channels_last = masked.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the strides images come with
    assert torch.allclose(model.render(mesh, channels_last, codes, compiled=True, batch=8), eager, atol=1e-4)
    packages = list(folder.glob("*.pt2"))
    assert len(packages) == 1
    stamp = packages[0].stat().st_mtime_ns

    other = small(seed=1)                         # other weights, same configuration
    other.compile_cache_dir = str(folder)
    codes = other.reference_codes(torch.rand(3, 32, 32) * 2 - 1)
    mine = other.render(mesh[:8], masked[:8], codes, compiled=True, batch=8)
    assert torch.allclose(mine, other.render(mesh[:8], masked[:8], codes), atol=1e-4)
    assert not torch.allclose(mine, model.render(mesh[:8], masked[:8], codes), atol=1e-2)
    assert list(folder.glob("*.pt2")) == packages and packages[0].stat().st_mtime_ns == stamp  # not recompiled


def test_configs_without_audio_offsets_read_the_frame_at_its_time():
    """Checkpoints from before ``audio_offsets`` read one feature frame per video frame; the cpu
    config's window leans ahead (the mouth moves before its sound) and survives the JSON round trip."""
    from models.config import ModelConfig

    d = CPU.to_dict()
    assert ModelConfig.from_dict(d) == CPU and isinstance(ModelConfig.from_dict(d).syncformer.audio_offsets, tuple)
    del d["syncformer"]["audio_offsets"]
    assert ModelConfig.from_dict(d).syncformer.audio_offsets == (0,)
    ahead = CPU.syncformer.audio_offsets
    assert 0 in ahead and max(ahead) > -min(ahead)


def test_a_compiled_package_loads_without_importing_inductor(compiled):
    """A new process (every ``resync dub``) loads a compiled package and runs it without importing
    Inductor, Dynamo and SymPy, which cost the dub's first chunk most of a second."""
    folder = compiled[1]
    script = f"""
import sys, torch
from tests.models.test_resyncer import small
model = small()
model.compile_cache_dir = {str(folder)!r}
codes = model.reference_codes(torch.rand(3, 32, 32) * 2 - 1)
mesh, masked = torch.rand(5, 1, 32, 32), torch.rand(5, 3, 32, 32) * 2 - 1
compiled = model.render(mesh, masked, codes, compiled=True, batch=8)
assert not model._compile_failed
assert torch.allclose(compiled, model.render(mesh, masked, codes), atol=1e-4)
print(sorted(m for m in sys.modules if m.startswith(("torch._inductor", "torch._dynamo", "sympy"))))
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_an_ensemble_predicts_its_members_mean_and_stores_at_half_precision(tmp_path):
    """Three Style-SyncFormers averaged: the style code is theirs side by side, the displacements the
    mean of what each predicts from its own code; a float16 checkpoint loads into float32 weights
    that differ from the saved ones by float16's rounding only."""
    from models.syncformer import SyncFormerEnsemble

    parts = [small(seed) for seed in (0, 1, 2)]
    cfg = replace(parts[0].config, syncformer=replace(parts[0].config.syncformer, members=3), weights_dtype="float16")
    model = ReSyncer(cfg, ModelCard(audio_features="logmel-test")).eval()
    assert isinstance(model.syncformer, SyncFormerEnsemble)
    for dst, src in zip(model.syncformer.members, parts):
        dst.load_state_dict(src.syncformer.state_dict())
    ref, audio = torch.randn(50, 478, 3) * 0.01, torch.randn(20, 16)
    style = model.style_code(ref)
    assert style.shape == (3 * cfg.syncformer.style_dim,)
    own = torch.stack([p.displacements(audio, p.style_code(ref)) for p in parts])
    assert torch.allclose(model.displacements(audio, style), own.mean(0), atol=1e-6)
    assert not torch.allclose(own[0], own[1])          # the members do differ

    model.save(tmp_path / "m", include_discriminator=False)
    from safetensors.torch import load_file
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    loaded = ReSyncer.load(tmp_path / "m")
    assert loaded.config == cfg and all(p.dtype == torch.float32 for p in loaded.parameters())
    for (k, a), b in zip(model.syncformer.state_dict().items(), loaded.syncformer.state_dict().values()):
        assert torch.equal(a.half().float(), b), k
    assert torch.allclose(loaded.displacements(audio, loaded.style_code(ref)), own.mean(0), atol=1e-3)
