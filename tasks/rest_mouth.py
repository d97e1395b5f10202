"""The mouth at rest in the pauses of the new speech: one drawn still mouth, moved with the head.

The generator draws every frame on its own, from that frame's masked face, so the mouth of a mesh
that stays still still flickers from frame to frame: dubbed with translated tracks, the base's
held-out ``train/`` speakers' re-tracked mouths moved about as much in the pauses as in the speech,
where the planned mesh moved a tenth as much. A real mouth at rest is still. So the pauses show one
rendering of the speaker's rest pose, made once per dub on a frontal frame whose real mouth is at
rest (``tasks.dub_plan.reference_frame`` at the 0.1 quantile of opening), warped onto each frame's
mesh (same triangle, same barycentric coordinates): only the head moves it. It fades in and out
with the plan's ``rest_weight``, the same ramp that eases the motion to rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from models.renderer import warp_texture
from tasks.landmarks import INNER_LIP_RING, LIPS


@dataclass
class RestMouth:
    """The generator's crop of the speaker's mouth at rest and that mesh in the crop's pixels; with
    detail transfer, the fine detail of the frame it was drawn on and that frame's tracked mesh."""
    crop: np.ndarray      # (S, S, 3) uint8
    points: np.ndarray    # (V, 2) float32
    frame: int = -1       # the video frame it was drawn on
    detail: np.ndarray | None = None         # (D, D, 3) float32 that frame's high band (``tasks.detail``)
    detail_points: np.ndarray | None = None  # (V, 2) its tracked mesh in the D crop's pixels


def hold_still(generated: np.ndarray, new_verts: np.ndarray, weight: np.ndarray, rest: RestMouth) -> np.ndarray:
    """``generated`` (B, S, S, 3) uint8 crops, in place: each frame's drawn face blended towards the
    rest mouth moved onto its mesh ``new_verts`` (B, V, 3 crop pixels), by ``weight`` (B,) in [0, 1]."""
    rows = np.flatnonzero(weight > 0)
    if len(rows) == 0:
        return generated
    for k in rows:     # the opening between the lips has no triangles: the rest crop moved with the lips
        fill_opening(generated[k], new_verts[k], float(weight[k]), rest)
    size = generated.shape[1]
    image = torch.from_numpy(rest.crop).permute(2, 0, 1)[None].float().expand(len(rows), -1, -1, -1)
    source = torch.from_numpy(rest.points[None].astype(np.float32)).expand(len(rows), -1, -1)
    moved, covered = warp_texture(image, source, torch.from_numpy(new_verts[rows].astype(np.float32)), size)
    alpha = covered * torch.from_numpy(weight[rows].astype(np.float32))[:, None, None, None]
    drawn = torch.from_numpy(generated[rows]).permute(0, 3, 1, 2).float()
    out = drawn * (1 - alpha) + moved * alpha
    generated[rows] = out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return generated


def fill_opening(crop: np.ndarray, verts: np.ndarray, weight: float, rest: RestMouth) -> None:
    """``crop`` (S, S, 3) uint8, in place: inside its mesh's inner lips (dilated by a pixel, feathered),
    the rest crop moved by the similarity that takes the rest mesh's lips onto ``verts``' lips, by
    ``weight``. Without it the thin gap of a mouth at rest shows the generator's flicker."""
    ring = verts[INNER_LIP_RING, :2].astype(np.float32)
    if not np.isfinite(ring).all():
        return
    hole = np.zeros(crop.shape[:2], np.float32)
    cv2.fillPoly(hole, [np.round(ring).astype(np.int32)], 1.0)
    hole = cv2.GaussianBlur(cv2.dilate(hole, np.ones((3, 3), np.uint8)), (0, 0), 0.7)
    if hole.max() <= 0:
        return
    m, _ = cv2.estimateAffinePartial2D(rest.points[LIPS].astype(np.float32), verts[LIPS, :2].astype(np.float32))
    if m is None:
        return
    moved = cv2.warpAffine(rest.crop, m, crop.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    a = (hole * weight)[..., None]
    crop[:] = np.clip(crop * (1 - a) + moved * a + 0.5, 0, 255).astype(np.uint8)


__all__ = ["RestMouth", "fill_opening", "hold_still"]
