"""Named MediaPipe Face Mesh landmark indices (478-point topology with refined irises)."""

from __future__ import annotations

import numpy as np

N_LANDMARKS = 478

# Points that move with the skull, not with expression: forehead, nose bridge, temples, outer and
# inner eye corners, cheekbones. The rigid (Umeyama) pose fit uses only these.
STABLE = np.array([10, 151, 9, 8, 168, 6, 197, 195, 5, 54, 284, 21, 251, 103, 332, 67, 297, 109, 338,
                   33, 133, 362, 263, 234, 454, 127, 356, 116, 345], dtype=np.int64)

LEFT_EYE = np.array([33, 133], dtype=np.int64)      # image-left eye (the person's right), outer + inner corner
RIGHT_EYE = np.array([362, 263], dtype=np.int64)
MOUTH_CORNERS = np.array([61, 291], dtype=np.int64)
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
NOSE_TIP = 1
CHIN = 152

# Lips (outer and inner contours), for lip-weighted losses and mouth metrics.
LIPS = np.array(sorted({61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
                        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415}),
                dtype=np.int64)

# The inner-lip contour in order around the mouth (upper lip left to right, lower lip back): the
# outline of what a mouth shows inside (teeth, tongue).
INNER_LIP_RING = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95],
                          dtype=np.int64)


def eye_centers(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) eye centers of (..., 478, D) landmarks."""
    return points[..., LEFT_EYE, :].mean(axis=-2), points[..., RIGHT_EYE, :].mean(axis=-2)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap divided by the eye-to-eye distance: scale-free, comparable across faces and frames."""
    gap = np.linalg.norm(points[..., UPPER_LIP_INNER, :2] - points[..., LOWER_LIP_INNER, :2], axis=-1)
    le, re = eye_centers(points[..., :2])
    return gap / np.maximum(np.linalg.norm(le - re, axis=-1), 1e-6)
