"""The still mouth of the pauses (``tasks.rest_mouth``): moved with the mesh, faded by the plan's
weight, the opening between the lips filled too, and drawn on a frontal frame at rest."""

from __future__ import annotations

import numpy as np

from tasks.landmarks import INNER_LIP_RING, LIPS
from tasks.dub_plan import frontal_frame
from tasks.rest_mouth import RestMouth, hold_still


def face_points(size: int = 64) -> np.ndarray:
    """(478, 2) points spread over a ``size`` crop, lips around its middle (a mesh the warp can use)."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(8, size - 8, (478, 2)).astype(np.float32)
    angle = np.linspace(0, 2 * np.pi, len(LIPS), endpoint=False)
    pts[LIPS] = np.stack([size / 2 + 12 * np.cos(angle), size / 2 + 5 * np.sin(angle)], 1)
    ring = np.linspace(0, 2 * np.pi, len(INNER_LIP_RING), endpoint=False)
    pts[INNER_LIP_RING] = np.stack([size / 2 + 8 * np.cos(ring), size / 2 + 2 * np.sin(ring)], 1)
    return pts


def test_hold_still_moves_the_rest_mouth_with_the_mesh_by_the_weight():
    size = 64
    yy, xx = np.mgrid[:size, :size]
    rest_crop = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    pts = face_points(size)
    rest = RestMouth(rest_crop, pts)
    verts = np.concatenate([pts + np.float32([2, 1]), np.zeros((478, 1), np.float32)], 1)   # the head moved
    drawn = np.full((3, size, size, 3), 128, np.uint8)
    out = hold_still(drawn.copy(), np.stack([verts] * 3), np.float32([0.0, 0.5, 1.0]), rest)
    assert np.array_equal(out[0], drawn[0])                       # weight 0: the generator's crop as drawn
    c = size // 2
    # weight 1 at the mouth (inside the lips too): the rest crop's pixel from 2 px left, 1 px up
    assert np.abs(out[2, c, c].astype(int) - rest_crop[c - 1, c - 2].astype(int)).max() <= 3
    assert np.abs(out[2, c + 8, c + 5].astype(int) - rest_crop[c + 7, c + 3].astype(int)).max() <= 3
    half = (drawn[1, c, c].astype(float) + rest_crop[c - 1, c - 2]) / 2
    assert np.abs(out[1, c, c] - half).max() <= 3                 # half way


def test_rest_frame_is_frontal_and_as_closed_as_the_speaker_at_rest():
    openings = np.array([0.30, 0.02, 0.03, 0.25, 0.031, np.nan, 0.2, 0.15, 0.12, 0.1, 0.18, 0.22], np.float32)
    yaw = np.array([0, 30, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], np.float32)
    usable = np.ones(len(openings), bool)
    assert frontal_frame(openings, yaw, usable, 0.1) in (2, 4)            # not the turned frame 1, nor an open one
    usable[[2, 4]] = False
    assert frontal_frame(openings, yaw, usable, 0.1) not in (0, 3, 5)
