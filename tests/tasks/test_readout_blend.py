"""A dub's predicted motion: the Style-SyncFormer's, blended with the model's motion read-out."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from models.readout import fit_readout
from tasks.dub_plan import predict_displacements
from tests.models.test_resyncer import small


class ToneFeatures:
    """16 numbers per 20 ms from the samples themselves: enough for a model whose audio_dim is 16."""

    name, dim, rate_hz, offset_s = "tone-test", 16, 50.0, 0.0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        frames = samples[: len(samples) // 320 * 320].reshape(-1, 320)
        return np.stack([frames[:, k::16].mean(1) * (k + 1) for k in range(16)], 1).astype(np.float32)


def test_the_readout_weight_blends_the_two_predictions_and_is_ignored_without_a_readout():
    model = small()
    rng = np.random.default_rng(0)
    samples = rng.normal(size=16000 * 3).astype(np.float32)
    track = SimpleNamespace(timestamps=np.arange(75) / 25.0)
    style = rng.normal(scale=0.1, size=(60, model.config.syncformer.n_vertices, 3)).astype(np.float32)
    features = ToneFeatures()
    plain = predict_displacements(model, features, None, samples, track, style)
    assert np.array_equal(predict_displacements(model, features, None, samples, track, style, 0.7), plain)

    tokens = [torch.randn(100, model.syncformer.token_dim) for _ in range(3)]
    motion = [torch.randn(100, model.config.syncformer.n_vertices, 3) for _ in range(3)]
    model.readout = fit_readout(tokens, motion, components=2)
    assert np.array_equal(predict_displacements(model, features, None, samples, track, style, 0.0), plain)
    read = predict_displacements(model, features, None, samples, track, style, 1.0)
    half = predict_displacements(model, features, None, samples, track, style, 0.5)
    assert not np.allclose(read, plain)
    assert np.allclose(half, 0.5 * plain + 0.5 * read, atol=1e-5)
    # the read-out speaks in the reference's units: its motion sits where the reference's first window sits
    window = style[: model.config.syncformer.style_window]
    assert np.allclose(read.mean(0), window.mean(0), atol=3 * window.std())
