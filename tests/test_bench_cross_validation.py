"""bench/quality's cross-validation read-outs: ridge on standardised tokens, speaker-disjoint folds."""

from __future__ import annotations

import numpy as np

from bench.quality import ridge, speaker_folds


def test_ridge_recovers_a_linear_read_out_whatever_the_input_scales():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)) * rng.uniform(0.01, 100, size=12)   # channels of very different scales
    y = (x / x.std(0)) @ rng.normal(size=12) + 3.0
    model = ridge(x, y, lam=1e-6)
    assert np.allclose(model(x), y, atol=1e-3)
    # a strong penalty shrinks the read-out towards the mean, it does not shift it
    shrunk = ridge(x, y, lam=100.0)(x)
    assert abs(shrunk.mean() - y.mean()) < 1e-6 and shrunk.std() < 0.1 * y.std()


def test_ridge_weights_let_a_speakers_own_rows_decide():
    """Everyone's footage says y = x; one speaker's says y = -x. Weighted up, theirs wins."""
    rng = np.random.default_rng(1)
    everyone, own = rng.normal(size=(1000, 1)), rng.normal(size=(50, 1))
    x, y = np.vstack([everyone, own]), np.concatenate([everyone[:, 0], -own[:, 0]])
    probe = np.array([[1.0]])
    plain = ridge(x, y, lam=1e-3)(probe)[0]
    weighted = ridge(x, y, lam=1e-3, weights=np.concatenate([np.ones(1000), np.full(50, 100.0)]))(probe)[0]
    assert plain > 0.5 and weighted < -0.5


def test_speaker_folds_are_disjoint_cover_everyone_and_do_not_move():
    speakers = [f"S{i}" for i in range(23)] * 2
    folds = speaker_folds(speakers, 5)
    assert len(folds) == 5 and set().union(*folds) == set(speakers)
    assert sum(len(f) for f in folds) == 23
    assert speaker_folds(list(reversed(speakers)), 5) == folds
