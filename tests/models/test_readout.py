"""The motion read-out: a closed-form linear map from audio tokens to motion in a speaker's units."""

from __future__ import annotations

import pytest
import torch

from models.readout import MotionReadout, fit_readout, reference_spread
from models.resyncer import ReSyncer
from tests.models.test_resyncer import small

V, D = 10, 24


def speakers(n: int = 6, frames: int = 300, seed: int = 0):
    """Clips whose motion is one linear function of the tokens through two lip directions, each
    speaker with their own resting face and their own amplitude, plus a little tracker noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, 2, generator=g)
    directions = torch.zeros(2, V * 3)
    directions[0, 1::3] = torch.linspace(1, 0, V)          # a jaw opening: y of the first vertices most
    directions[1, 0::3] = torch.linspace(0, 1, V)          # a spread: x of the last vertices most
    tokens, motion = [], []
    for _ in range(n):
        t = torch.randn(frames, D, generator=g)
        rest = torch.randn(V, 3, generator=g)
        amplitude = 0.5 + 2 * torch.rand(1, generator=g)
        m = rest + amplitude * ((t @ mix) @ directions).reshape(frames, V, 3)
        tokens.append(t)
        motion.append(m + 0.01 * torch.randn(frames, V, 3, generator=g))
    return tokens, motion


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_a_new_speaker_is_read_in_their_own_units():
    tokens, motion = speakers()
    readout = fit_readout(tokens[:-1], motion[:-1], components=2, penalty=1e-4)
    new_tokens, new_motion = tokens[-1], motion[-1]
    predicted = readout(new_tokens, new_motion[:50])       # 50 frames of their own motion as the reference
    assert predicted.shape == new_motion.shape
    assert corr(predicted - predicted.mean(0), new_motion - new_motion.mean(0)) > 0.95
    # where the face sits and how far it moves come from the reference, not from the training speakers
    mean, spread = reference_spread(new_motion[:50])
    got_mean, got_spread = reference_spread(predicted)
    assert torch.allclose(got_mean, mean, atol=0.3 * float(spread))
    assert 0.8 < float(got_spread / spread) < 1.25


def test_the_reference_sets_the_amplitude_and_the_audio_the_timing():
    tokens, motion = speakers()
    readout = fit_readout(tokens, motion, components=2, penalty=1e-3)
    calm, lively = motion[0][:50], motion[0][:50] * 3.0
    a, b = readout(tokens[1], calm), readout(tokens[1], lively)
    assert torch.allclose(b - b.mean(0), 3.0 * (a - a.mean(0)), atol=1e-3)


def test_the_basis_follows_the_weighted_vertices():
    """A loud motion of vertices nobody reads (a brow) must not take the only direction from the lips."""
    tokens, motion = speakers(seed=1)
    g = torch.Generator().manual_seed(5)
    loud = [m.clone() for m in motion]
    for m in loud:
        m[:, -1, 2] += 50 * torch.randn(len(m), generator=g)  # the last vertex shakes, unrelated to the audio
    weights = torch.ones(V)
    weights[-1] = 0.01
    even = fit_readout(tokens[:-1], loud[:-1], components=1, penalty=1e-3)
    lips = fit_readout(tokens[:-1], loud[:-1], components=1, penalty=1e-3, vertex_weights=weights)
    jaw = lambda m: m[:, 0, 1]                                # noqa: E731 - the first vertex's opening
    ref = loud[-1][:50]
    assert corr(jaw(lips(tokens[-1], ref)), jaw(motion[-1])) > 0.6
    assert corr(jaw(lips(tokens[-1], ref)), jaw(motion[-1])) > corr(jaw(even(tokens[-1], ref)), jaw(motion[-1])) + 0.3


def test_fit_refuses_mismatched_inputs():
    tokens, motion = speakers(n=2)
    with pytest.raises(ValueError):
        fit_readout(tokens, motion[:1])
    with pytest.raises(ValueError):
        fit_readout([tokens[0][:-1]], [motion[0]])


def test_a_model_keeps_its_readout_through_a_checkpoint(tmp_path):
    model = small()
    without = model.save(tmp_path / "plain")
    assert ReSyncer.load(tmp_path / "plain").readout is None
    tokens = [torch.randn(80, model.syncformer.token_dim) for _ in range(3)]
    motion = [torch.randn(80, model.config.syncformer.n_vertices, 3) for _ in range(3)]
    model.readout = fit_readout(tokens, motion, components=3)
    version = model.save(tmp_path / "with")
    assert version != without
    loaded = ReSyncer.load(tmp_path / "with")
    assert isinstance(loaded.readout, MotionReadout) and loaded.readout.components == 3
    ref = motion[0][:20]
    assert torch.allclose(loaded.readout(tokens[1], ref), model.readout(tokens[1], ref), atol=1e-5)
