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
    the mask; both uint8 or float in [0, 255]. The statistics are taken on at most ~128 x 128 pixels
    (every k-th row and column), so a large crop costs no more to measure than a small one."""
    k = max(1, generated.shape[0] // 128)
    w = mask[::k, ::k, None].astype(np.float32)
    total = max(float(w.sum()), 1.0)
    g, o = generated[::k, ::k].astype(np.float32), original[::k, ::k].astype(np.float32)
    g_mean, o_mean = (g * w).sum((0, 1)) / total, (o * w).sum((0, 1)) / total
    g_std = np.sqrt(((g - g_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    o_std = np.sqrt(((o - o_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    # (generated - g_mean) * (o_std / g_std) + o_mean, clipped: OpenCV's per-channel arithmetic in
    # place does the same float32 operations in one pass each (numpy broadcasts over 3 channels slowly)
    out = np.array(generated, dtype=np.float32, order="C")   # a fresh C-ordered buffer OpenCV can write into
    cv2.subtract(out, _scalar(g_mean), dst=out)
    cv2.multiply(out, _scalar(o_std / g_std), dst=out)
    cv2.add(out, _scalar(o_mean), dst=out)
    return np.clip(out, 0, 255, out=out)


def _scalar(per_channel: np.ndarray) -> tuple[float, ...]:
    """A per-channel value as OpenCV's Scalar (float32 values, which it converts back exactly)."""
    return (*(float(v) for v in per_channel.astype(np.float32)), 0.0)


def feather(mask: np.ndarray, size: int) -> np.ndarray:
    """Soften a [0, 1] mask so the blend has no hard edge (kernel ~6% of the crop side)."""
    k = max(3, int(size * 0.06) | 1)
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0)


def composite(frame: np.ndarray, generated: np.ndarray, crop: np.ndarray, mask: np.ndarray,
              colour_match: bool = True) -> np.ndarray:
    """Blend ``generated`` (S, S, 3, uint8) into a copy of ``frame`` (H, W, 3, uint8) through ``mask``
    (S, S) in crop space; ``crop`` is the 2x3 image -> crop matrix. Pixels where the mask is 0 are
    untouched."""
    result = frame.copy()
    composite_into(result, generated, crop, mask, colour_match)
    return result


def composite_into(frame: np.ndarray, generated: np.ndarray, crop: np.ndarray, mask: np.ndarray,
                   colour_match: bool = True) -> None:
    """``composite``, written into ``frame`` itself: only the region the mask reaches is read and
    written (a face is a small part of a 1080p frame), so the cost does not depend on the frame's
    resolution and no full frame is copied."""
    h, w = frame.shape[:2]
    size = generated.shape[0]
    soft = feather(mask, size)
    ys, xs = np.nonzero(soft > 1e-3)
    if len(xs) == 0:
        return
    inv = invert_affine(crop)
    corners = np.array([[xs.min() - 2, ys.min() - 2], [xs.max() + 2, ys.min() - 2],
                        [xs.min() - 2, ys.max() + 2], [xs.max() + 2, ys.max() + 2]], np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    if colour_match:
        src_crop = cv2.warpAffine(frame, crop, (size, size), flags=cv2.INTER_AREA
                                  if abs(np.linalg.det(crop[:, :2])) < 1 else cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)
        gen = match_colour(generated, src_crop, soft > 0.5)
    else:
        gen = generated.astype(np.float32)
    roi = inv.copy()
    roi[:, 2] -= (x0, y0)  # the inverse warp, into the region's own pixel grid
    back = cv2.warpAffine(gen, roi, (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpAffine(soft, roi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    np.clip(alpha, 0, 1, out=alpha)
    patch = frame[y0:y1, x0:x1]
    # patch * (1 - alpha) + back * alpha, rounded half to even and saturated to uint8: the same float32
    # operations as numpy's, in one OpenCV pass each instead of numpy's temporaries
    blended = cv2.multiply(back, cv2.merge([alpha] * 3))
    cv2.add(blended, cv2.multiply(patch, cv2.merge([1 - alpha] * 3), dtype=cv2.CV_32F), dst=blended)
    np.copyto(patch, cv2.add(blended, 0.0, dtype=cv2.CV_8U), where=alpha[..., None] > 0)  # elsewhere the source, exactly
