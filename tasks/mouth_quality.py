"""How a dubbed mouth compares with the real one, measured on re-tracked frames (bench/quality).

Two failures that correlation does not see: a mouth that follows the speech at half the real
amplitude (``amplitude_ratio``), and a mouth that opens but shows a dark cavity where the real one
shows teeth (``interior_ratios``: brightness, contrast and sharpness inside the real frame's inner-lip
contour, output over real, on frames whose real mouth is open). Both read aligned crops of the same
frame, so the same pixels are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tasks.audio import pause_frames
from tasks.landmarks import INNER_LIP_RING, mouth_opening
from tasks.qa import silence_motion

# A real mouth counts as open from this inner-lip gap (in eye distances): teeth or tongue can show.
OPEN_MOUTH = 0.10
MIN_INTERIOR_PIXELS = 12


@dataclass
class Interior:
    """Inside the inner-lip contour of one image: mean and spread of luma (0..255), and the variance
    of its Laplacian (fine detail: the edges of teeth)."""
    brightness: float
    contrast: float
    sharpness: float


def inner_mouth_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels inside the inner-lip contour of (478, >=2) landmarks in pixels."""
    mask = np.zeros(shape, np.uint8)
    ring = np.round(points[INNER_LIP_RING, :2]).astype(np.int32)
    cv2.fillPoly(mask, [ring], 1)
    return mask.astype(bool)


def interior(image: np.ndarray, mask: np.ndarray) -> Interior | None:
    """Interior statistics of an RGB uint8 image inside ``mask``; None when the region is too small."""
    if int(mask.sum()) < MIN_INTERIOR_PIXELS:
        return None
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(luma, cv2.CV_32F)
    inside = luma[mask]
    return Interior(float(inside.mean()), float(inside.std()), float(lap[mask].var()))


def amplitude_ratio(output_opening: np.ndarray, real_opening: np.ndarray) -> float:
    """Spread of the output's mouth opening over the real one's (1: as lively; 0.5: half as far)."""
    ok = np.isfinite(output_opening) & np.isfinite(real_opening)
    if ok.sum() < 3:
        return float("nan")
    real = float(np.std(real_opening[ok]))
    return float(np.std(output_opening[ok])) / real if real > 1e-9 else float("nan")


def interior_ratios(outputs: list[np.ndarray], truths: list[np.ndarray], real_marks: np.ndarray,
                    open_threshold: float = OPEN_MOUTH) -> dict[str, float]:
    """Output over real brightness, contrast and sharpness inside the real inner-lip contour, as the
    median over frames whose real mouth is open (``open_frames`` says how many there were)."""
    opening = mouth_opening(real_marks)
    ratios: dict[str, list[float]] = {"brightness": [], "contrast": [], "sharpness": []}
    for out, real, marks, gap in zip(outputs, truths, real_marks, opening):
        if not np.isfinite(gap) or gap < open_threshold or not np.isfinite(marks).all():
            continue
        mask = inner_mouth_mask(real.shape[:2], marks)
        o, r = interior(out, mask), interior(real, mask)
        if o is None or r is None:
            continue
        ratios["brightness"].append(o.brightness / max(r.brightness, 1.0))
        ratios["contrast"].append(o.contrast / max(r.contrast, 1.0))
        ratios["sharpness"].append(o.sharpness / max(r.sharpness, 1.0))
    n = len(ratios["brightness"])
    out = {f"interior_{k}": float(np.median(v)) if v else float("nan") for k, v in ratios.items()}
    out["open_frames"] = float(n)
    return out


def rest_in_silence(opening: np.ndarray, speech: np.ndarray, closed: float) -> dict[str, float]:
    """The mouth during the pauses of a (translated) track, as QA measures pauses: its mean opening
    over the speaker's own closed mouth (``closed``, from their real frames; 1: at rest), and its
    motion over the motion during speech (``tasks.qa.silence_motion``; 0: still)."""
    quiet = pause_frames(speech)
    ratio = float(np.nanmean(opening[quiet])) / max(closed, 1e-3) if quiet.sum() >= 5 else float("nan")
    return {"silence_opening_ratio": ratio, "silence_motion_ratio": silence_motion(opening, speech)}


__all__ = ["OPEN_MOUTH", "Interior", "inner_mouth_mask", "interior", "amplitude_ratio",
           "interior_ratios", "rest_in_silence"]
