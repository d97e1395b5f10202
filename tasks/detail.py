"""Fine detail the model crop cannot carry, moved over from the frame being redrawn (DESIGN section 2.4).

The generator draws the lower face in a ``size`` crop (128 px in the ``cpu`` config). A face that
covers more pixels than that in the frame loses, in the round trip, every frequency above the
crop's Nyquist limit: pores, stubble, the fine lines of the lips. Pasted back, the mouth looks soft
next to the untouched upper face (QA's sharpness ratio).

That band is not lost, though: it is in the frame being redrawn. ``with_detail`` cuts a crop of the
frame ``factor`` times finer than the model's, keeps only what the model crop cannot hold (the crop
minus its own down-and-up-sampled copy), moves that detail with the face from the tracked mesh onto
the mesh being drawn (triangle by triangle, like the face-swap texture), and adds it to the upsampled
generated crop. The mouth opening itself is outside the Face Mesh tessellation, so teeth and tongue
stay the generator's own. With ``factor`` 1 (a face no bigger than the model crop) nothing changes.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from models.renderer import texture_map
from tasks.composite import composite_into
from tasks.geometry import warp_crop
from tasks.mouth_interior import MouthReference, paste_interior
from tasks.rest_mouth import RestMouth


def detail_factor(mats: np.ndarray, max_factor: int) -> int:
    """How many times finer than the model crop (matrices ``mats`` (N, 2, 3), frame -> crop) the
    frame samples the face: the median over frames, rounded, in [1, max_factor]."""
    if len(mats) == 0 or max_factor <= 1:
        return 1
    crop_px_per_frame_px = np.sqrt(np.abs(np.linalg.det(mats[:, :, :2])))
    return int(np.clip(round(float(np.median(1.0 / np.maximum(crop_px_per_frame_px, 1e-6)))), 1, max_factor))


def low_band(image: np.ndarray, size: int) -> np.ndarray:
    """(D, D, 3) -> float32: what a ``size`` crop can hold of it, its down-and-up-sampled copy."""
    d = image.shape[0]
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (d, d), interpolation=cv2.INTER_CUBIC).astype(np.float32)


def high_band(crops: np.ndarray, size: int) -> np.ndarray:
    """(B, D, D, 3) uint8 -> float32: what a ``size`` crop cannot hold, crop minus its down-up copy."""
    return np.stack([c.astype(np.float32) - low_band(c, size) for c in crops])


def with_detail(frames: np.ndarray, generated: np.ndarray, mats: np.ndarray, old_verts: np.ndarray,
                new_verts: np.ndarray, masks: np.ndarray, factor: int, detail_from: float = 1.0,
                batch: int = 8, interior: MouthReference | None = None, rest: RestMouth | None = None,
                rest_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generated crops with the frames' fine detail, ``factor`` times finer.

    frames: (B, H, W, 3) uint8; generated: (B, S, S, 3) uint8; mats: (B, 2, 3) frame -> S crop;
    old_verts / new_verts: (B, V, 3) the tracked and the drawn mesh in S-crop pixels; masks: (B, S, S)
    the redraw masks. ``interior``: a mouth whose teeth fill each drawn opening
    (``tasks.mouth_interior``). ``rest`` and ``rest_weight`` (B,): in the pauses the detail comes
    from the rest mouth's frame by that weight, not from a frame whose real mouth may be speaking
    (``tasks.rest_mouth``). Returns float32 crops (B, D, D, 3) in [0, 255], their masks (B, D, D)
    and matrices (B, 2, 3), D = S * factor, ready for ``composite``.
    """
    size = generated.shape[1]
    band = max(4, int(round(size * detail_from)))
    if factor <= 1 and band >= size and interior is None:
        return generated.astype(np.float32), masks, mats
    d = size * factor
    fine = (mats * factor).astype(mats.dtype)
    out = np.empty((len(frames), d, d, 3), np.float32)
    for s in range(0, len(frames), batch):   # bounded memory: the rasterizer works per pixel
        e = s + batch
        detail = high_band(np.stack([warp_crop(f, m, d) for f, m in zip(frames[s:e], fine[s:e])]), band)
        # only the window the masks (and their feathering) reach is rasterized: the lower face
        x0, y0, side = _window(masks[s:e], factor, pad=int(0.05 * d) + 2)
        h, w = min(side, d - y0), min(side, d - x0)      # the window's part inside the crop
        target = new_verts[s:e] * factor - np.array([x0, y0, 0], np.float32)
        moved, covered = move_detail(detail, old_verts[s:e] * factor, target, (h, w), factor)
        if rest is not None and rest.detail is not None and rest_weight is not None:
            still_detail(moved, covered, target, rest_weight[s:e], rest, factor)
        for k, g in enumerate(generated[s:e]):
            up = cv2.resize(g, (d, d), interpolation=cv2.INTER_CUBIC).astype(np.float32)
            # where the mesh carries texture its fine band replaces the generator's; the open mouth
            # (no triangles there) keeps all the generator drew, with a soft edge between the two
            hard = covered[k, :h, :w]
            cover = cv2.merge([np.maximum(hard, cv2.GaussianBlur(hard, (0, 0), factor))] * 3)
            win = up[y0:y0 + h, x0:x0 + w]     # a view: written in place, one OpenCV pass per operation
            if band < size:                    # win += cover * (low - win)
                cv2.add(win, cv2.multiply(cover, cv2.subtract(low_band(up, band)[y0:y0 + h, x0:x0 + w], win)), dst=win)
            cv2.add(win, cv2.multiply(cover, moved[k, :h, :w]), dst=win)      # win += cover * moved
            if interior is not None:
                paste_interior(up, new_verts[s + k] * factor, interior, feather=0.5 * factor)
            np.clip(up, 0, 255, out=out[s + k])
    big_masks = np.stack([cv2.resize(m, (d, d), interpolation=cv2.INTER_LINEAR) for m in masks])
    return out, big_masks, fine


def move_detail(detail: np.ndarray, source: np.ndarray, target: np.ndarray, window: tuple[int, int],
                factor: int) -> tuple[np.ndarray, np.ndarray]:
    """``detail`` (B, D, D, 3) float32 moved from the meshes ``source`` (B, V, 2+, in its pixels) onto
    ``target`` (B, V, 3, in pixels of a (height, width) ``window``). Returns the moved detail (B, height,
    width, 3), 0 where the target mesh does not reach, and that coverage (B, height, width) in {0, 1}.

    Which point each pixel samples is affine inside each triangle and continuous across their edges,
    so it is rasterized on a grid ``factor`` times coarser (the model crop's own pixels) and
    interpolated linearly in between: a ninth of the rasterizer's work at a factor of 3, and inside
    the triangles the same points. Only along the mesh's border (the face outline and the opening of
    the mouth) the coverage edge moves by up to half a coarse pixel, which the feathering of
    ``with_detail`` (a blur of ``factor`` pixels) spreads anyway."""
    height, width = window
    f = max(1, factor)
    ch, cw = -(-(height - 1) // f) + 1, -(-(width - 1) // f) + 1   # coarse points at fine 0, f, 2f, ...
    coarse = np.array(target, np.float32)
    coarse[..., :2] /= f
    points, covered = texture_map(torch.from_numpy(np.ascontiguousarray(source, np.float32)),
                                  torch.from_numpy(coarse), (ch, cw))
    points, valid = points.permute(0, 3, 1, 2), covered[:, None].float()
    # the map one coarse point past the mesh: the mean of its covered neighbours, so a fine pixel on
    # the border interpolates between points of the mesh, never towards 0
    near = torch.nn.functional.avg_pool2d(valid, 3, 1, 1, count_include_pad=False)
    spread = torch.nn.functional.avg_pool2d(points * valid, 3, 1, 1, count_include_pad=False) / near.clamp_min(1e-6)
    points = torch.where(valid > 0, points, spread)
    size = ((ch - 1) * f + 1, (cw - 1) * f + 1)        # fine pixel i is coarse point i / f exactly
    fine = torch.nn.functional.interpolate(torch.cat([points, valid], 1), size=size, mode="bilinear",
                                           align_corners=True)[:, :, :height, :width]
    d = detail.shape[1]
    grid = fine[:, :2].permute(0, 2, 3, 1) / max(d - 1, 1) * 2 - 1
    moved = torch.nn.functional.grid_sample(torch.from_numpy(detail).permute(0, 3, 1, 2), grid, mode="bilinear",
                                            padding_mode="border", align_corners=True)
    cover = (fine[:, 2:] >= 0.5).float()
    return (moved * cover).permute(0, 2, 3, 1).numpy(), cover[:, 0].numpy()


def still_detail(moved: np.ndarray, covered: np.ndarray, target: np.ndarray, weight: np.ndarray, rest: RestMouth,
                 factor: int) -> None:
    """``moved`` detail and its coverage (``move_detail``'s, for meshes ``target``), in place: blended
    by ``weight`` (B,) towards the rest mouth's frame's detail moved onto the same meshes."""
    rows = np.flatnonzero(weight > 0)
    if len(rows) == 0:
        return
    source = np.repeat(rest.detail[None], len(rows), 0)
    points = np.repeat(rest.detail_points[None], len(rows), 0)
    still, still_covered = move_detail(source, points, target[rows], covered.shape[1:], factor)
    a = weight[rows].astype(np.float32)[:, None, None]
    moved[rows] = moved[rows] * (1 - a[..., None]) + still * a[..., None]
    covered[rows] = covered[rows] * (1 - a) + still_covered * a


def composite_redrawn(frames: np.ndarray, generated: np.ndarray, mats: np.ndarray, old_verts: np.ndarray,
                      new_verts: np.ndarray, masks: np.ndarray, factor: int, detail_from: float,
                      interior: MouthReference | None = None, rest: RestMouth | None = None,
                      rest_weight: np.ndarray | None = None) -> list[np.ndarray]:
    """Each redrawn crop composited into a copy of its frame (arguments as for ``with_detail``), with
    the frame's detail carried over ``factor`` times finer; ``factor`` 0 turns detail transfer off."""
    out = [f.copy() for f in frames]
    paste_redrawn(out, generated, mats, old_verts, new_verts, masks, factor, detail_from, interior, rest, rest_weight)
    return out


def paste_redrawn(frames: Sequence[np.ndarray], generated: np.ndarray, mats: np.ndarray, old_verts: np.ndarray,
                  new_verts: np.ndarray, masks: np.ndarray, factor: int, detail_from: float,
                  interior: MouthReference | None = None, rest: RestMouth | None = None,
                  rest_weight: np.ndarray | None = None) -> None:
    """``composite_redrawn`` into the frames themselves (each (H, W, 3) uint8, written in place)."""
    if factor > 0:
        generated, masks, mats = with_detail(frames, generated, mats, old_verts, new_verts, masks, factor, detail_from,
                                             interior=interior, rest=rest, rest_weight=rest_weight)
    for f, g, m, k in zip(frames, generated, mats, masks):
        composite_into(f, g, m, k)


def _window(masks: np.ndarray, factor: int, pad: int) -> tuple[int, int, int]:
    """(x0, y0, side): the square, in the ``factor`` times finer crop, around where any mask is > 0."""
    d = masks.shape[1] * factor
    ys, xs = np.nonzero(masks.max(0) > 1e-3)
    if len(xs) == 0:
        return 0, 0, 1
    x0, y0 = max(int(xs.min()) * factor - pad, 0), max(int(ys.min()) * factor - pad, 0)
    x1, y1 = min((int(xs.max()) + 1) * factor + pad, d), min((int(ys.max()) + 1) * factor + pad, d)
    return x0, y0, max(x1 - x0, y1 - y0)


__all__ = ["composite_redrawn", "paste_redrawn", "detail_factor", "high_band", "low_band", "move_detail", "still_detail", "with_detail"]
