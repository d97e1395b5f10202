"""Compositing a generated crop back into its frame: exact outside the mask, seamless inside."""

from __future__ import annotations

import cv2
import numpy as np

from tasks.composite import composite, composite_into, match_colour
from tasks.geometry import invert_affine


def _setup():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8), (9, 9), 3)
    a, th = 0.4, 0.15  # crop = similarity: scale 0.4, 8.6 degrees, face near (600, 400)
    crop = np.array([[a * np.cos(th), -a * np.sin(th), -180.0], [a * np.sin(th), a * np.cos(th), -150.0]])
    mask = np.zeros((128, 128), np.float32)
    mask[70:118, 28:100] = 1
    return frame, crop, mask


def test_pixels_outside_the_mask_are_the_source_exactly():
    frame, crop, mask = _setup()
    generated = np.full((128, 128, 3), 200, np.uint8)
    out = composite(frame, generated, crop, mask, colour_match=False)
    inv = invert_affine(crop)
    reach = cv2.warpAffine(cv2.dilate(mask, np.ones((25, 25))), inv, frame.shape[1::-1]) > 0
    assert np.array_equal(out[~reach], frame[~reach])
    assert not np.array_equal(out[reach], frame[reach])
    # deep inside the mask the generated pixels win
    centre = (inv @ np.array([64.0, 94.0, 1.0])).round().astype(int)
    assert np.abs(out[centre[1], centre[0]].astype(int) - 200).max() <= 2


def test_the_source_crop_composited_onto_itself_changes_nothing():
    frame, crop, mask = _setup()
    own = cv2.warpAffine(frame, crop, (128, 128), flags=cv2.INTER_AREA)
    out = composite(frame, own, crop, mask)
    diff = np.abs(out.astype(int) - frame.astype(int))
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) < 40


def test_colour_matching_removes_a_cast():
    rng = np.random.default_rng(1)
    original = rng.normal(120, 20, (64, 64, 3)).clip(0, 255)
    cast = (original * 0.8 + 40).clip(0, 255)
    matched = match_colour(cast, original, np.ones((64, 64), bool))
    assert np.abs(matched.mean((0, 1)) - original.mean((0, 1))).max() < 0.5
    assert np.abs(matched.std((0, 1)) - original.std((0, 1))).max() < 0.5


def test_an_empty_mask_returns_the_frame():
    frame, crop, mask = _setup()
    out = composite(frame, np.zeros((128, 128, 3), np.uint8), crop, np.zeros_like(mask))
    assert np.array_equal(out, frame)


def test_compositing_in_place_touches_only_the_face_region_and_equals_the_copy():
    frame, crop, mask = _setup()
    generated = np.full((128, 128, 3), 200, np.uint8)
    expected = composite(frame, generated, crop, mask)
    in_place = frame.copy()
    before = in_place.__array_interface__["data"][0]
    composite_into(in_place, generated, crop, mask)
    assert np.array_equal(in_place, expected) and in_place.__array_interface__["data"][0] == before
    changed = np.argwhere((in_place != frame).any(-1))
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert (y1 - y0) * (x1 - x0) < 0.2 * frame.shape[0] * frame.shape[1]   # a face-sized region, not the frame


def test_colour_matching_accepts_a_strided_crop():
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 255, (2, 3, 64, 64), dtype=np.uint8).transpose(0, 2, 3, 1)   # as the generator hands it
    original = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    matched = match_colour(batch[0], original, np.ones((64, 64), bool))
    dense = match_colour(np.ascontiguousarray(batch[0]), original, np.ones((64, 64), bool))
    # the same up to the order numpy sums the statistics in (it follows the memory layout)
    assert np.allclose(matched, dense, atol=1e-3) and np.allclose(matched.mean((0, 1)), original.mean((0, 1)), atol=0.5)
