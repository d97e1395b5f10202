"""Detail transfer (tasks/detail.py): how much finer than the model crop a frame holds the face, and
the band split that keeps the generator's coarse drawing under the frame's fine texture, and the
texture moved with the mesh of a real tracked clip (the whole dub: tests/tasks/test_lipsync.py)."""

from __future__ import annotations

import cv2
import numpy as np

from tasks.detail import detail_factor, high_band, low_band, with_detail
from tests.models.test_renderer import clip, frame_mesh  # noqa: F401 - the tracked clip fixture


def crop_matrix(crop_px_per_frame_px: float) -> np.ndarray:
    a = crop_px_per_frame_px
    return np.array([[a, 0.0, -10.0], [0.0, a, -20.0]])


def test_detail_factor_is_how_much_finer_the_frame_holds_the_face():
    mats = lambda a, n=5: np.stack([crop_matrix(a)] * n)  # noqa: E731
    assert detail_factor(mats(0.25), 4) == 4     # a 512-px face drawn in a 128-px crop
    assert detail_factor(mats(0.34), 4) == 3
    assert detail_factor(mats(0.1), 4) == 4      # capped
    assert detail_factor(mats(1.0), 4) == 1      # the crop already holds every pixel
    assert detail_factor(mats(2.0), 4) == 1      # an upsampled small face
    assert detail_factor(mats(0.25), 1) == 1     # turned off
    assert detail_factor(np.zeros((0, 2, 3)), 4) == 1


def test_the_bands_add_up_to_the_image_and_the_high_band_is_fine_only():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    smooth = (127 + 100 * np.sin(x / 9.0) * np.cos(y / 11.0))[..., None].repeat(3, 2)
    image = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    high = high_band(image[None], 16)[0]
    assert np.allclose(low_band(image, 16) + high, image, atol=1e-3)
    assert abs(high.mean()) < 2.0 and high.std() > 10           # the noise is fine detail
    smooth_high = high_band(smooth.astype(np.uint8)[None], 16)[0]
    assert smooth_high.std() < 0.2 * high.std()                  # slow shading stays in the low band


def test_without_a_finer_frame_or_a_lower_band_nothing_changes():
    gen = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), np.uint8)
    masks = np.ones((2, 32, 32), np.float32)
    mats = np.stack([crop_matrix(1.0)] * 2)
    verts = np.zeros((2, 478, 3), np.float32)
    out, out_masks, out_mats = with_detail(np.zeros((2, 64, 64, 3), np.uint8), gen, mats, verts, verts, masks, 1, 1.0)
    assert np.array_equal(out, gen.astype(np.float32)) and out_masks is masks and out_mats is mats


def test_detail_moved_on_a_coarse_map_lands_where_the_exact_rasterizer_puts_it(clip):
    """``move_detail`` rasterizes the mesh's map once per model-crop pixel and interpolates it: on a
    real tracked face, moved from a closed mouth onto an open one three times finer than the crop, it
    covers what the per-pixel rasterizer covers and samples the same points inside."""
    import torch

    from models.renderer import warp_texture
    from tasks.detail import move_detail

    _, _, _, closed, opened = clip
    factor, size = 3, 128
    d = size * factor
    source, target = (frame_mesh(clip, i, size) * factor for i in (closed, opened))
    y, x = np.mgrid[0:d, 0:d].astype(np.float32)
    texture = np.stack([100 * np.sin(x / 5.0), 100 * np.cos(y / 7.0), 50 * np.sin((x + y) / 6.0)], -1)[None]
    target[..., :2] -= (20.0, 150.0)                     # a window on the lower face, as with_detail cuts it
    window = (d - 150, d - 40)
    moved, cover = move_detail(texture.astype(np.float32), source[None], target[None], window, factor)
    exact, exact_cover = warp_texture(torch.from_numpy(texture).permute(0, 3, 1, 2), torch.from_numpy(source[None]),
                                      torch.from_numpy(target[None]), window)
    exact, exact_cover = exact[0].permute(1, 2, 0).numpy(), exact_cover[0, 0].numpy() > 0
    assert moved.shape == (1, *window, 3) and cover.shape == (1, *window)
    both, either = (cover[0] > 0) & exact_cover, (cover[0] > 0) | exact_cover
    assert exact_cover.mean() > 0.2 and both.sum() / either.sum() > 0.97
    inside = cv2.erode(exact_cover.astype(np.uint8), np.ones((2 * factor + 1,) * 2, np.uint8)) > 0
    err = np.abs(moved[0] - exact)[inside]
    assert err.mean() < 0.5 and np.percentile(err, 99) < 5, (err.mean(), np.percentile(err, 99))   # of +-100
    assert np.all(moved[0][cover[0] == 0] == 0)
