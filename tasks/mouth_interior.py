"""The inside of the mouth (teeth, tongue) copied from one open-mouth frame of the speaker.

The generator draws the inside of the mouth from style codes, not pixels: on people it never saw
it paints a grey blur where the real frame shows teeth (issue 16). The speaker's own teeth are in
the video. Like Face2Face's mouth retrieval, but from one frame: of a few frontal frames with a wide
mouth, the one that shows the most teeth lends its mouth interior, moved into the opening of each
drawn mesh.

Teeth stay on their jaw: the upper half of the new opening is copied from just below the
reference's upper inner lip, the lower half from just above its lower inner lip, each at the same
distance from its lip. A new mouth less open than the reference shows less of both rows; a wider one
stretches only the reference's middle (the dark of the mouth). Across, the opening is scaled from
corner to corner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from tasks.geometry import warp_crop
from tasks.landmarks import INNER_LIP_RING, LOWER_LIP_INNER, UPPER_LIP_INNER
from tasks.track import TrackResult

# the inner-lip ring from the left corner (78) along the upper lip to the right corner (308), and back
# along the lower lip
UPPER_INNER = INNER_LIP_RING[:11]
LOWER_INNER = np.concatenate([INNER_LIP_RING[10:], INNER_LIP_RING[:1]])


@dataclass
class MouthReference:
    """One open mouth of the speaker: an aligned crop and its real landmarks in that crop's pixels."""
    crop: np.ndarray      # (D, D, 3) uint8
    points: np.ndarray    # (V, 2+) float32
    frame: int = -1       # which frame of its video it is


def mouth_reference_candidates(track: TrackResult, usable: np.ndarray, min_opening: float, count: int = 6,
                               quantiles: tuple[float, float] = (0.6, 0.97), max_yaw: float = 20.0) -> np.ndarray:
    """Up to ``count`` frontal usable frames whose mouths are among the speaker's wider ones (between
    the ``quantiles`` of their openings, so not the single widest, often a yawn or a tracking error),
    spread over those openings; none when the speaker's wide mouth is under ``min_opening`` eye
    distances (a speaker who never shows teeth lends none)."""
    idx = np.flatnonzero(usable)
    opening = track.mouth_openings()[idx]
    ok = np.isfinite(opening) & (np.abs(track.euler[idx, 0]) <= max_yaw)
    if not ok.any():
        return np.zeros(0, np.int64)
    idx, opening = idx[ok], opening[ok]
    low, high = np.quantile(opening, quantiles)
    if high < min_opening:
        return np.zeros(0, np.int64)
    keep = (opening >= max(low, min_opening)) & (opening <= high)
    pool, pool_opening = idx[keep], opening[keep]
    if len(pool) == 0:
        return np.zeros(0, np.int64)
    ordered = pool[np.argsort(pool_opening)]
    return np.unique(ordered[np.linspace(0, len(ordered) - 1, min(count, len(ordered))).round().astype(int)])


def mouth_reference(frame: np.ndarray, track: TrackResult, index: int, mat: np.ndarray, size: int) -> MouthReference:
    """The mouth of frame ``index`` (decoded ``frame``) in its ``size`` aligned crop (``mat``: frame
    -> that crop); its points are the tracked landmarks, where the real lips are."""
    raw = np.asarray(track.raw[index], np.float32)
    points = raw[:, :2] @ mat[:, :2].T.astype(np.float32) + mat[:, 2].astype(np.float32)
    return MouthReference(warp_crop(frame, mat, size), points.astype(np.float32), index)


def teeth_score(ref: MouthReference) -> float:
    """Mean brightness inside the inner lips: teeth are the brightest thing a mouth shows, the tongue
    and the dark of the mouth less (0 when the opening covers no pixel)."""
    inside = np.zeros(ref.crop.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(ref.points[INNER_LIP_RING, :2]).astype(np.int32)], 1)
    if not inside.any():
        return 0.0
    luma = cv2.cvtColor(ref.crop, cv2.COLOR_RGB2GRAY)
    return float(luma[inside.astype(bool)].mean())


def speaker_mouth(frame_at: Callable[[int], np.ndarray], track: TrackResult, usable: np.ndarray, mats: np.ndarray,
                  size: int, min_opening: float) -> MouthReference | None:
    """The speaker's mouth that shows the most teeth among ``mouth_reference_candidates``, in a
    ``size`` crop (``mats``: frame -> that crop, per frame); ``frame_at(i)`` decodes frame i."""
    refs = [mouth_reference(frame_at(int(i)), track, int(i), mats[i], size)
            for i in mouth_reference_candidates(track, usable, min_opening)]
    return max(refs, key=teeth_score) if refs else None


def _mouth_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Origin (between the corners), across and down unit vectors, and the corner-to-corner width."""
    left, right = points[INNER_LIP_RING[0], :2], points[INNER_LIP_RING[10], :2]
    across = right - left
    width = float(np.linalg.norm(across))
    u = across / max(width, 1e-6)
    return (left + right) / 2, u, np.array([-u[1], u[0]]), width


def _lip_curve(points: np.ndarray, ring: np.ndarray, origin: np.ndarray, u: np.ndarray, v: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """One inner lip as (across, down) coordinates in the mouth's frame, sorted across."""
    rel = points[ring, :2] - origin
    a, b = rel @ u, rel @ v
    order = np.argsort(a)
    return a[order], b[order]


def interior_source(target: np.ndarray, ref: np.ndarray, xs: np.ndarray, ys: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """For pixels (``xs``, ``ys``) of a crop whose drawn mesh is ``target`` (V, 2+), the point of the
    reference crop (mesh ``ref``) each copies its mouth interior from: (map_x, map_y) for ``cv2.remap``."""
    o_t, u_t, v_t, w_t = _mouth_frame(target)
    o_r, u_r, v_r, w_r = _mouth_frame(ref)
    rel = np.stack([xs - o_t[0], ys - o_t[1]], -1)
    a, b = rel @ u_t, rel @ v_t
    up_t, lo_t = _lip_curve(target, UPPER_INNER, o_t, u_t, v_t), _lip_curve(target, LOWER_INNER, o_t, u_t, v_t)
    up_r, lo_r = _lip_curve(ref, UPPER_INNER, o_r, u_r, v_r), _lip_curve(ref, LOWER_INNER, o_r, u_r, v_r)
    b_up, b_lo = np.interp(a, *up_t), np.interp(a, *lo_t)
    a_r = a * (w_r / max(w_t, 1e-6))
    r_up, r_lo = np.interp(a_r, *up_r), np.interp(a_r, *lo_r)
    half = np.maximum(r_lo - r_up, 0.0) / 2
    from_upper = (b - b_up) <= (b_lo - b)
    b_r = np.where(from_upper, r_up + np.minimum(np.maximum(b - b_up, 0), half),
                   r_lo - np.minimum(np.maximum(b_lo - b, 0), half))
    src = o_r + a_r[..., None] * u_r + b_r[..., None] * v_r
    return src[..., 0].astype(np.float32), src[..., 1].astype(np.float32)


def paste_interior(image: np.ndarray, target: np.ndarray, ref: MouthReference, feather: float = 1.0) -> None:
    """Copy the reference's mouth interior into the opening of the mesh ``target`` (V, 2+, in
    ``image``'s pixels) of ``image`` (D, D, 3) float32, in place. The reference is rescaled to
    ``image``'s size. Nothing happens where the drawn mouth is closed."""
    if np.linalg.norm(target[UPPER_LIP_INNER, :2] - target[LOWER_LIP_INNER, :2]) < 1.0:
        return                                     # closed: under a pixel between the lips
    d = image.shape[0]
    scale = d / ref.crop.shape[0]
    crop = ref.crop if scale == 1 else cv2.resize(ref.crop, (d, d), interpolation=cv2.INTER_CUBIC)
    ring = np.round(target[INNER_LIP_RING, :2]).astype(np.int32)
    x0, y0 = np.clip(ring.min(0) - 2, 0, d - 1)
    x1, y1 = np.clip(ring.max(0) + 3, 0, d)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(inside, [ring - np.array([x0, y0])], 1)
    if not inside.any():
        return
    alpha = inside.astype(np.float32)
    if feather > 0:   # a soft edge inside the lips, never onto them
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather) * alpha
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    map_x, map_y = interior_source(target, ref.points * scale, xs, ys)
    copied = cv2.remap(crop, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    win = image[y0:y1, x0:x1]
    win += alpha[..., None] * (copied - win)


__all__ = ["MouthReference", "mouth_reference", "mouth_reference_candidates", "teeth_score", "speaker_mouth",
           "interior_source", "paste_interior"]
