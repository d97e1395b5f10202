"""The mouth interior copied from one open-mouth frame (tasks/mouth_interior.py): each row of teeth
stays against its own lip whatever the new opening, nothing outside the drawn opening changes, and
the reference is the toothiest of a few wide frontal mouths of the speaker (a real tracked clip)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.landmarks import INNER_LIP_RING
from tasks.mouth_interior import (MouthReference, interior_source, mouth_reference, mouth_reference_candidates,
                                  paste_interior, speaker_mouth, teeth_score)

CENTRE, HALF_WIDTH = np.array([64.0, 64.0]), 24.0
WHITE, GREY, BLACK = 250.0, 128.0, 5.0


def mouth_points(half_height: float) -> np.ndarray:
    """(478, 2) landmarks whose inner-lip ring is an ellipse of this half height (others at 0)."""
    points = np.zeros((478, 2), np.float32)
    angles = np.linspace(np.pi, 0, 11)              # left corner, along the upper lip, right corner
    upper = np.stack([CENTRE[0] + HALF_WIDTH * np.cos(angles), CENTRE[1] - half_height * np.sin(angles)], 1)
    lower = np.stack([CENTRE[0] + HALF_WIDTH * np.cos(-angles[::-1]), CENTRE[1] + half_height * np.sin(angles[::-1])], 1)
    points[INNER_LIP_RING[:11]] = upper
    points[INNER_LIP_RING[10:]] = lower[:10]        # lower lip from the right corner back towards the left
    return points


def reference(half_height: float = 12.0) -> MouthReference:
    """A mouth whose upper teeth (white) fill 4 px under the upper lip, lower teeth (grey) 4 px over
    the lower lip, and the dark of the mouth between."""
    crop = np.full((128, 128, 3), 90, np.uint8)
    y = np.arange(128)[:, None]
    top, bottom = CENTRE[1] - half_height, CENTRE[1] + half_height
    inside = (y > top) & (y < bottom)
    crop[..., :] = np.where(inside, BLACK, 90)[..., None].astype(np.uint8)
    crop[(y[:, 0] > top) & (y[:, 0] <= top + 4)] = WHITE
    crop[(y[:, 0] >= bottom - 4) & (y[:, 0] < bottom)] = GREY
    return MouthReference(crop, mouth_points(half_height))


def test_each_row_of_teeth_stays_against_its_own_lip_whatever_the_opening():
    ref = reference(12.0)
    for half in (5.0, 12.0, 22.0):                  # less open, as open, more open than the reference
        target = mouth_points(half)
        image = np.full((128, 128, 3), 60.0, np.float32)
        paste_interior(image, target, ref, feather=0)
        x = int(CENTRE[0])
        top, bottom = int(np.ceil(CENTRE[1] - half)) + 1, int(np.floor(CENTRE[1] + half)) - 1
        assert image[top, x, 0] == pytest.approx(WHITE, abs=2), half       # under the upper lip: upper teeth
        assert image[bottom, x, 0] == pytest.approx(GREY, abs=2), half     # over the lower lip: lower teeth
        if half > 12:
            assert image[int(CENTRE[1]), x, 0] == pytest.approx(BLACK, abs=2)   # the wider middle is the mouth's dark
        # outside the drawn opening nothing changed
        assert (image[int(CENTRE[1] - half) - 3, :, :] == 60).all() and (image[int(CENTRE[1] + half) + 3] == 60).all()
        assert (image[:, : int(CENTRE[0] - HALF_WIDTH) - 2] == 60).all()


def test_across_the_mouth_the_copy_is_scaled_corner_to_corner():
    ref_points, target = mouth_points(12.0), mouth_points(12.0)
    target[:, 0] = CENTRE[0] + (target[:, 0] - CENTRE[0]) * 0.5      # a mouth half as wide
    xs = np.array([[CENTRE[0] + 10.0]], np.float32)
    map_x, map_y = interior_source(target, ref_points, xs, np.array([[CENTRE[1]]], np.float32))
    assert map_x[0, 0] == pytest.approx(CENTRE[0] + 20.0, abs=1e-3)   # 10 px right of centre reads 20 px in the reference
    assert map_y[0, 0] == pytest.approx(CENTRE[1], abs=0.5)


def test_a_closed_drawn_mouth_is_left_alone():
    image = np.full((128, 128, 3), 60.0, np.float32)
    paste_interior(image, mouth_points(0.0), reference(), feather=1.0)
    assert (image == 60).all()


def test_the_mouth_that_shows_teeth_scores_above_a_dark_one():
    teeth, dark = reference(), reference()
    dark.crop[dark.crop == WHITE] = BLACK
    assert teeth_score(teeth) > teeth_score(dark) + 10
    assert teeth_score(MouthReference(teeth.crop, mouth_points(0.0))) >= 0.0


def test_the_reference_is_the_toothiest_of_a_few_wide_frontal_mouths_of_a_real_clip(clip_track):
    track, uri, settings = clip_track
    from catalogs.storage import Storage
    from tasks.decode import VideoSource
    from tasks.training_data import crop_matrices

    candidates = mouth_reference_candidates(track, track.valid, min_opening=0.0)
    opening = track.mouth_openings()
    frontal = track.valid & (np.abs(track.euler[:, 0]) <= 20) & np.isfinite(opening)
    assert 1 <= len(candidates) <= 6 and frontal[candidates].all()
    low, high = np.quantile(opening[frontal], [0.6, 0.97])
    assert (opening[candidates] >= low - 1e-6).all() and (opening[candidates] <= high + 1e-6).all()
    assert len(mouth_reference_candidates(track, track.valid, min_opening=float(opening[frontal].max()) + 1)) == 0

    mats = crop_matrices(track, 128, settings.crop_size) * 2
    with VideoSource(Storage(settings), uri) as video:
        chosen = speaker_mouth(video.frame, track, track.valid, mats, 256, 0.0)
        scores = [teeth_score(mouth_reference(video.frame(int(i)), track, int(i), mats[i], 256)) for i in candidates]
    assert chosen is not None and chosen.crop.shape == (256, 256, 3)
    assert teeth_score(chosen) == pytest.approx(max(scores))


@pytest.fixture(scope="module")
def clip_track(tmp_path_factory):
    from tests.models.test_renderer import CLIP
    if not CLIP.is_file():
        pytest.skip(f"test clip {CLIP} is absent (the media folder sits beside the repo as ../shared/data)")
    from catalogs.settings import Settings
    from catalogs.storage import Storage
    from tasks.track import track_video

    settings = Settings(root=str(tmp_path_factory.mktemp("root")), allowed_roots=[str(CLIP.parent)])
    return track_video(Storage(settings), settings, str(CLIP)), str(CLIP), settings
