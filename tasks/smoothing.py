"""One Euro filtering of landmark tracks (Casiez et al., CHI 2012).

A low-pass filter whose cutoff rises with speed: heavy smoothing when the face is still (where
jitter shows), light smoothing when it moves (where lag would show). Vectorised over all
coordinates; restarted after gaps and cuts so one shot's motion never bleeds into the next.
"""

from __future__ import annotations

import numpy as np

from tasks.frame_store import BLOCK_ROWS, FrameStore


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    tau = 1.0 / (2 * np.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


def one_euro(x: np.ndarray | FrameStore, timestamps: np.ndarray, valid: np.ndarray, restart: np.ndarray | None = None, *,
             min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0, scale: np.ndarray | None = None,
             reverse: bool = False, dtype: type = np.float64, block: int = BLOCK_ROWS) -> np.ndarray | FrameStore:
    """Filter (T, ...) values over time. ``valid`` marks frames with data; the filter restarts after
    an invalid frame and wherever ``restart`` is True. ``scale`` (T,) divides speeds so that ``beta``
    means the same for small and large faces (pass the face size in pixels).

    ``reverse`` runs from the last frame to the first (``timestamps`` must then decrease). The state
    is float64 whatever ``dtype`` the result is kept in. ``x`` is read and the result written a
    block of frames at a time: a ``FrameStore`` in gives a ``FrameStore`` out, so a long video's
    landmarks stay on disk; an array gives an array."""
    n = len(x)
    out = FrameStore(n, x.shape[1:], dtype) if isinstance(x, FrameStore) else np.empty(x.shape, dtype)
    prev = dprev = None
    t_prev = 0.0
    starts = range(0, n, block)
    for a in (reversed(starts) if reverse else starts):
        src = np.asarray(x[a:a + block])
        rows = src.astype(dtype)                # frames the filter does not touch keep their input
        for i in (range(a + len(src) - 1, a - 1, -1) if reverse else range(a, a + len(src))):
            if not valid[i]:
                prev = None
                continue
            xi = np.asarray(src[i - a], np.float64)
            if prev is None or (restart is not None and restart[i]):
                prev, dprev, t_prev = xi.copy(), np.zeros_like(xi), float(timestamps[i])
                continue
            dt = max(float(timestamps[i]) - t_prev, 1e-4)
            t_prev = float(timestamps[i])
            dx = (xi - prev) / dt
            a_d = _alpha(d_cutoff, dt)
            dprev = a_d * dx + (1 - a_d) * dprev
            speed = np.abs(dprev) / (float(scale[i]) if scale is not None else 1.0)
            alpha = _alpha(min_cutoff + beta * speed, dt)
            prev = alpha * xi + (1 - alpha) * prev
            rows[i - a] = prev
        out[a:a + len(rows)] = rows
    return out


def one_euro_zero_phase(x: np.ndarray, timestamps: np.ndarray, valid: np.ndarray, restart: np.ndarray | None = None,
                        dtype: type = np.float64, **kwargs) -> np.ndarray:
    """One Euro run forward, then backward over its output: tracking is offline, so we can cancel
    the causal filter's lag (about one frame at 25 fps, measured on the shared clips) entirely.
    The forward pass is kept in float64 (on disk, for a ``FrameStore``), the result in ``dtype``."""
    fwd = one_euro(x, timestamps, valid, restart, **kwargs)
    back_restart = None
    if restart is not None:  # a restart at frame i begins a shot; going backwards, frame i-1 does
        back_restart = np.zeros_like(restart)
        back_restart[:-1] = restart[1:]
    return one_euro(fwd, -np.asarray(timestamps), valid, back_restart, reverse=True, dtype=dtype, **kwargs)
