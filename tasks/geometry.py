"""Rigid geometry of the face: similarity fits, head pose, canonical template, displacements, crops.

The 3D facial dynamics of ReSyncer are per-frame displacements of the speaker's canonical mesh:
each frame's landmarks are brought into a canonical frame by a similarity transform fitted on
points that do not move with expression (``landmarks.STABLE``), and the speaker's template is the
mean of those canonical meshes. ``to_image`` inverts that mapping for rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tasks.frame_store import BLOCK_ROWS
from tasks.landmarks import MOUTH_CORNERS, STABLE, eye_centers


@dataclass(frozen=True)
class Similarity:
    """x_image = scale * R @ x_canonical + t, for one frame."""
    scale: float
    rotation: np.ndarray     # (3, 3)
    translation: np.ndarray  # (3,)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (s, R, t) with dst ~ s R src + t (Umeyama 1991). src, dst: (n, d)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(src.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1, -1] = -1
    r = u @ sign @ vt
    var_s = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(d) @ sign) / max(var_s, 1e-12))
    return s, r, mu_d - s * r @ mu_s


def fit_pose(points: np.ndarray, template: np.ndarray) -> tuple[Similarity, float]:
    """Pose of one frame's (478, 3) landmarks against the template; also the RMS residual on the
    stable points relative to face size (a tracking-confidence signal: high = landmarks inconsistent)."""
    s, r, t = umeyama(template[STABLE], points[STABLE])
    fitted = s * template[STABLE] @ r.T + t
    rms = float(np.sqrt(((fitted - points[STABLE]) ** 2).sum(1).mean()))
    le, re = eye_centers(points[:, :2])
    return Similarity(s, r, t), rms / max(float(np.linalg.norm(le - re)), 1e-6)


def to_canonical(points: np.ndarray, pose: Similarity) -> np.ndarray:
    return (points - pose.translation) @ pose.rotation / pose.scale


def to_image(canonical: np.ndarray, pose: Similarity) -> np.ndarray:
    """Inverse mapping: canonical mesh (template + displacements) back into image space."""
    return pose.scale * canonical @ pose.rotation.T + pose.translation


def build_template(points: np.ndarray, valid: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Speaker's canonical template: generalized Procrustes mean of the valid frames' meshes.

    points: (T, 478, 3) image-space landmarks; valid: (T,) bool. The template is centred, with unit
    eye distance, so displacements are in "eye distances" whatever the video resolution."""
    return template_of(points, np.flatnonzero(valid), iterations)


def template_of(points, frames: np.ndarray, iterations: int = 3, block: int = BLOCK_ROWS) -> np.ndarray:
    """``build_template`` over the rows ``frames`` of ``points`` (an array or a ``FrameStore``),
    read a block at a time: the mean is summed frame by frame in order, exactly as a mean over one
    stacked array would be, without stacking a shot's meshes."""
    ref = np.asarray(points[int(frames[len(frames) // 2])], np.float64).copy()
    for _ in range(iterations):
        ref = _normalize(ref)
        total = None
        for a in range(0, len(frames), block):
            for p in np.asarray(points[frames[a:a + block]], np.float64):
                c = to_canonical(p, fit_pose(p, ref)[0])
                total = c if total is None else total + c
        ref = total / len(frames)
    return _normalize(ref)


def _normalize(mesh: np.ndarray) -> np.ndarray:
    mesh = mesh - mesh[STABLE].mean(0)
    le, re = eye_centers(mesh)
    return mesh / max(float(np.linalg.norm(le - re)), 1e-9)


def euler_degrees(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) of a rotation matrix, in degrees (image axes: x right, y down, z away)."""
    sy = np.hypot(r[0, 0], r[1, 0])
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    yaw = np.degrees(np.arctan2(-r[2, 0], sy))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


# --- aligned crops -----------------------------------------------------------------------
# Where the eye centres and the mouth centre sit in a crop of side 1 (the lower face and chin
# must fit: the generator renders the mouth region).
CROP_TEMPLATE = np.array([[0.36, 0.40], [0.64, 0.40], [0.50, 0.74]], dtype=np.float64)


def crop_matrix(points: np.ndarray, size: int) -> np.ndarray:
    """2x3 similarity mapping image pixels to an aligned ``size`` crop, from eyes and mouth."""
    le, re = eye_centers(points[:, :2])
    mouth = points[MOUTH_CORNERS, :2].mean(0)
    src = np.stack([le, re, mouth]).astype(np.float64)
    s, r, t = umeyama(src, CROP_TEMPLATE * size)
    return np.hstack([s * r, t[:, None]]).astype(np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def warp_crop(frame: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """The aligned crop. Area-style filtering when shrinking keeps the round trip sharp."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.warpAffine(frame, m, (size, size), flags=interp, borderMode=cv2.BORDER_REFLECT)


def paste_back(crop: np.ndarray, m: np.ndarray, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse warp of a crop into frame coordinates, plus the mask of pixels the crop covers."""
    h, w = frame_shape
    inv = invert_affine(m)
    back = cv2.warpAffine(crop, inv, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    cover = cv2.warpAffine(np.full(crop.shape[:2], 255, np.uint8), inv, (w, h), flags=cv2.INTER_NEAREST) > 0
    return back, cover
