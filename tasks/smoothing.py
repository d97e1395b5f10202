"""One Euro filtering of landmark tracks (Casiez et al., CHI 2012).

A low-pass filter whose cutoff rises with speed: heavy smoothing when the face is still (where
jitter shows), light smoothing when it moves (where lag would show). Vectorised over all
coordinates; restarted after gaps and cuts so one shot's motion never bleeds into the next.
"""

from __future__ import annotations

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    tau = 1.0 / (2 * np.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


def one_euro(x: np.ndarray, timestamps: np.ndarray, valid: np.ndarray, restart: np.ndarray | None = None, *,
             min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0, scale: np.ndarray | None = None) -> np.ndarray:
    """Filter (T, ...) values over time. ``valid`` marks frames with data; the filter restarts after
    an invalid frame and wherever ``restart`` is True. ``scale`` (T,) divides speeds so that ``beta``
    means the same for small and large faces (pass the face size in pixels)."""
    out = x.astype(np.float64).copy()
    prev = dprev = None
    t_prev = 0.0
    for i in range(len(x)):
        if not valid[i]:
            prev = None
            continue
        if prev is None or (restart is not None and restart[i]):
            prev, dprev, t_prev = out[i].copy(), np.zeros_like(out[i]), float(timestamps[i])
            continue
        dt = max(float(timestamps[i]) - t_prev, 1e-4)
        t_prev = float(timestamps[i])
        dx = (out[i] - prev) / dt
        a_d = _alpha(d_cutoff, dt)
        dprev = a_d * dx + (1 - a_d) * dprev
        speed = np.abs(dprev) / (float(scale[i]) if scale is not None else 1.0)
        a = _alpha(min_cutoff + beta * speed, dt)
        prev = a * out[i] + (1 - a) * prev
        out[i] = prev
    return out


def one_euro_zero_phase(x: np.ndarray, timestamps: np.ndarray, valid: np.ndarray, restart: np.ndarray | None = None,
                        **kwargs) -> np.ndarray:
    """One Euro run forward, then backward over its output: tracking is offline, so we can cancel
    the causal filter's lag (about one frame at 25 fps, measured on the shared clips) entirely."""
    fwd = one_euro(x, timestamps, valid, restart, **kwargs)
    back_restart = None
    if restart is not None:  # a restart at frame i begins a shot; going backwards, frame i-1 does
        back_restart = np.zeros_like(restart)
        back_restart[:-1] = restart[1:]
        back_restart = back_restart[::-1]
    scale = kwargs.pop("scale", None)
    return one_euro(fwd[::-1], -np.asarray(timestamps)[::-1], valid[::-1], back_restart,
                    scale=None if scale is None else scale[::-1], **kwargs)[::-1]
