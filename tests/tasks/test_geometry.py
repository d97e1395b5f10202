"""Pure geometry and filtering: fast, synthetic, exact."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from tasks.geometry import build_template, crop_matrix, euler_degrees, fit_pose, to_canonical, to_image, umeyama
from tasks.landmarks import MOUTH_CORNERS, eye_centers
from tasks.smoothing import one_euro, one_euro_zero_phase

RNG = np.random.default_rng(0)


def test_umeyama_recovers_a_similarity():
    src = RNG.normal(size=(50, 3))
    r = Rotation.from_euler("yxz", [20, -10, 5], degrees=True).as_matrix()
    dst = 2.5 * src @ r.T + np.array([10.0, -3.0, 7.0])
    s, rot, t = umeyama(src, dst)
    assert np.isclose(s, 2.5) and np.allclose(rot, r) and np.allclose(t, [10, -3, 7])


def test_pose_template_displacements_round_trip():
    base = RNG.normal(size=(478, 3))
    frames, truth = [], []
    for k in range(20):
        r = Rotation.from_euler("yxz", [k - 10, 0.5 * k, -3], degrees=True).as_matrix()
        expr = np.zeros_like(base)
        expr[13:15, 1] = 0.1 * np.sin(k)  # the lips move; nothing else does
        frames.append(3.0 * (base + expr) @ r.T + np.array([100.0 + k, 50.0, 0.0]))
        truth.append(r)
    pts = np.stack(frames)
    template = build_template(pts, np.ones(20, bool))
    for i in (0, 7, 19):
        pose, residual = fit_pose(pts[i], template)
        assert residual < 1e-6  # the stable points fit exactly: expression is elsewhere
        canon = to_canonical(pts[i], pose)
        assert np.allclose(to_image(canon, pose), pts[i])
        disp = canon - template
        assert np.abs(disp[13:15]).max() > 10 * np.abs(np.delete(disp, [13, 14], 0)).max()
        yaw, pitch, roll = euler_degrees(pose.rotation @ np.linalg.inv(fit_pose(pts[10], template)[0].rotation))
        assert abs(yaw - (i - 10)) < 1.0


def test_crop_matrix_puts_eyes_and_mouth_in_place():
    pts = RNG.normal(size=(478, 3)) * 5 + 300
    pts[[33, 133], :2] = [[200, 200], [240, 200]]
    pts[[362, 263], :2] = [[300, 200], [340, 200]]
    pts[MOUTH_CORNERS, :2] = [[240, 330], [300, 330]]
    m = crop_matrix(pts, 256)
    le, re = eye_centers(pts[:, :2])
    mapped = (m[:, :2] @ np.stack([le, re]).T).T + m[:, 2]
    assert mapped[0, 0] < mapped[1, 0] and abs(mapped[0, 1] - mapped[1, 1]) < 1e-6  # level eyes, left to right
    assert 0.2 * 256 < mapped[0, 0] < 0.5 * 256


def test_one_euro_smooths_still_noise_and_zero_phase_has_no_lag():
    t = np.arange(200) / 25.0
    still = 100 + RNG.normal(scale=1.0, size=200)
    valid = np.ones(200, bool)
    out = one_euro(still[:, None], t, valid, min_cutoff=1.0, beta=0.0)[:, 0]
    assert np.std(np.diff(out[20:])) < 0.3 * np.std(np.diff(still[20:]))
    ramp = np.concatenate([np.zeros(100), np.linspace(0, 50, 100)])[:, None]
    causal = one_euro(ramp, t, valid, min_cutoff=1.0, beta=0.0)[:, 0]
    zero = one_euro_zero_phase(ramp, t, valid, min_cutoff=1.0, beta=0.0)[:, 0]
    mid = slice(140, 180)
    assert np.mean(ramp[mid, 0] - causal[mid]) > 1.0  # the causal filter trails the motion
    assert abs(np.mean(ramp[mid, 0] - zero[mid])) < 0.2  # the zero-phase one does not


def test_one_euro_restarts_after_gaps():
    t = np.arange(10) / 25.0
    x = np.array([0, 0, 0, 0, 0, 50, 50, 50, 50, 50], float)[:, None]
    valid = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    out = one_euro(x, t, valid, min_cutoff=0.1, beta=0.0)
    assert out[5, 0] == 50  # no smoothing across the gap


def _one_euro_reference(x, t, valid, restart, **kw):
    """The filter as first written: float64 copies of the whole track, the backward pass over a
    reversed copy. The kept-once version must give the same numbers."""
    def run(x, t, valid, restart, min_cutoff=1.0, beta=0.05, d_cutoff=1.0, scale=None):
        out, prev, t_prev = x.astype(np.float64).copy(), None, 0.0
        for i in range(len(x)):
            if not valid[i]:
                prev = None
                continue
            if prev is None or (restart is not None and restart[i]):
                prev, dprev, t_prev = out[i].copy(), np.zeros_like(out[i]), float(t[i])
                continue
            dt = max(float(t[i]) - t_prev, 1e-4)
            t_prev = float(t[i])
            alpha = lambda c: 1.0 / (1.0 + (1.0 / (2 * np.pi * np.asarray(c))) / dt)  # noqa: E731
            dx = (out[i] - prev) / dt
            dprev = alpha(d_cutoff) * dx + (1 - alpha(d_cutoff)) * dprev
            speed = np.abs(dprev) / (float(scale[i]) if scale is not None else 1.0)
            a = alpha(min_cutoff + beta * speed)
            prev = a * out[i] + (1 - a) * prev
            out[i] = prev
        return out
    fwd = run(x, t, valid, restart, **kw)
    back = np.zeros_like(restart)
    back[:-1] = restart[1:]
    scale = kw.pop("scale")
    return run(fwd[::-1], -t[::-1], valid[::-1], back[::-1], scale=scale[::-1], **kw)[::-1]


def test_zero_phase_one_euro_in_float32_is_the_float64_filter_rounded():
    n = 300
    t = np.arange(n) / 25.0
    x = RNG.normal(size=(n, 20, 3)).cumsum(0).astype(np.float32)
    valid = RNG.random(n) > 0.05
    x[~valid] = np.nan
    restart = np.zeros(n, bool)
    restart[[90, 200]] = True
    scale = RNG.uniform(50, 200, n)
    kept = one_euro_zero_phase(x, t, valid, restart, min_cutoff=1.0, beta=20.0, scale=scale, dtype=np.float32)
    reference = _one_euro_reference(x, t, valid, restart, min_cutoff=1.0, beta=20.0, scale=scale)
    assert kept.dtype == np.float32 and kept.flags.c_contiguous
    assert np.array_equal(kept, reference.astype(np.float32), equal_nan=True)
