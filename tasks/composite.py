"""Putting a generated face crop back into its frame (DESIGN section 2.4).

The crop is warped back with the inverse alignment and blended through a feathered lower-face
mask, after matching its colour statistics to the original frame's crop inside that mask, so a
generator's slight colour cast never shows as a seam. Outside the mask the source pixels are kept
exactly, which is what makes the upper face and background bit-identical to the source.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.geometry import invert_affine


def match_colour(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift and scale each channel of ``generated`` (S, S, 3) to the mean/std of ``original`` within
    the mask; both uint8 or float in [0, 255]."""
    w = mask[..., None].astype(np.float32)
    total = max(float(w.sum()), 1.0)
    g, o = generated.astype(np.float32), original.astype(np.float32)
    g_mean, o_mean = (g * w).sum((0, 1)) / total, (o * w).sum((0, 1)) / total
    g_std = np.sqrt(((g - g_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    o_std = np.sqrt(((o - o_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    return np.clip((g - g_mean) * (o_std / g_std) + o_mean, 0, 255)


def feather(mask: np.ndarray, size: int) -> np.ndarray:
    """Soften a [0, 1] mask so the blend has no hard edge (kernel ~6% of the crop side)."""
    k = max(3, int(size * 0.06) | 1)
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0)


def composite(frame: np.ndarray, generated: np.ndarray, crop: np.ndarray, mask: np.ndarray,
              colour_match: bool = True) -> np.ndarray:
    """Blend ``generated`` (S, S, 3, uint8) into ``frame`` (H, W, 3, uint8) through ``mask`` (S, S) in
    crop space; ``crop`` is the 2x3 image -> crop matrix. Pixels where the mask is 0 are untouched."""
    h, w = frame.shape[:2]
    size = generated.shape[0]
    soft = feather(mask, size)
    src_crop = cv2.warpAffine(frame, crop, (size, size), flags=cv2.INTER_AREA if abs(np.linalg.det(crop[:, :2])) < 1
                              else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gen = match_colour(generated, src_crop, soft > 0.5) if colour_match else generated.astype(np.float32)
    inv = invert_affine(crop)
    back = cv2.warpAffine(gen, inv, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpAffine(soft, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = np.clip(alpha, 0, 1)[..., None]
    out = frame.astype(np.float32) * (1 - alpha) + back * alpha
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    result[alpha[..., 0] <= 0] = frame[alpha[..., 0] <= 0]  # exactly the source where nothing was blended
    return result
