"""The benchmark's mouth measures: amplitude, the inside of an open mouth, the mouth at rest in pauses,
and the frame-exact cut that lets the benchmark run the user's commands on parts of a clip."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.landmarks import mouth_opening
from tasks.landmarks import INNER_LIP_RING
from tasks.mouth_quality import amplitude_ratio, inner_mouth_mask, interior_ratios, rest_in_silence


def face_marks(gap: float = 30.0, centre: tuple[float, float] = (128.0, 180.0)) -> np.ndarray:
    """(478, 3) landmarks of a 256-px crop: eyes 76 px apart, the inner-lip ring an ellipse ``gap`` tall."""
    marks = np.zeros((478, 3), np.float32)
    marks[[33, 133]] = [[80, 100, 0], [100, 100, 0]]
    marks[[362, 263]] = [[156, 100, 0], [176, 100, 0]]
    theta = np.pi - np.arange(len(INNER_LIP_RING)) * np.pi / 10    # left, over the top, right, under
    marks[INNER_LIP_RING, 0] = centre[0] + 30 * np.cos(theta)
    marks[INNER_LIP_RING, 1] = centre[1] - gap / 2 * np.sin(theta)
    return marks


def test_the_ring_is_the_inner_lip_and_the_gap_its_opening():
    marks = face_marks(gap=30)
    assert mouth_opening(marks) == pytest.approx(30 / 76, rel=1e-3)
    mask = inner_mouth_mask((256, 256), marks)
    assert mask[180, 128] and not mask[150, 128] and not mask[180, 90]
    assert 0.6 * np.pi * 30 * 15 < mask.sum() < 1.1 * np.pi * 30 * 15


def test_amplitude_ratio_reads_how_far_a_mouth_opens():
    t = np.linspace(0, 6 * np.pi, 300)
    real = 0.2 + 0.1 * np.sin(t)
    assert amplitude_ratio(0.2 + 0.05 * np.sin(t), real) == pytest.approx(0.5, rel=1e-3)
    assert amplitude_ratio(real, real) == pytest.approx(1.0)
    half = real.copy()
    half[::2] = np.nan                                             # untracked frames are skipped
    assert amplitude_ratio(half, real) == pytest.approx(1.0, rel=0.05)


def test_a_dark_cavity_where_teeth_show_scores_low():
    rng = np.random.default_rng(0)
    marks = face_marks(gap=30)
    mask = inner_mouth_mask((256, 256), marks)
    real = np.full((256, 256, 3), 120, np.uint8)
    teeth = rng.integers(170, 255, (256, 256, 1)).repeat(3, -1).astype(np.uint8)
    real[mask] = teeth[mask]
    cavity = real.copy()
    cavity[mask] = 25
    same = interior_ratios([real], [real], marks[None])
    dark = interior_ratios([cavity], [real], marks[None])
    assert same["interior_brightness"] == pytest.approx(1.0) and same["open_frames"] == 1
    assert dark["interior_brightness"] < 0.2 and dark["interior_contrast"] < 0.1 and dark["interior_sharpness"] < 0.2
    # a closed real mouth is not scored: nothing should show there
    closed = interior_ratios([cavity], [real], face_marks(gap=3)[None])
    assert closed["open_frames"] == 0 and np.isnan(closed["interior_brightness"])


def test_rest_in_silence_tells_a_resting_mouth_from_one_that_keeps_talking():
    rng = np.random.default_rng(1)
    speech = np.r_[np.ones(60, bool), np.zeros(60, bool), np.ones(60, bool)]
    talking = 0.05 + 0.25 * rng.random(180)
    resting = talking.copy()
    resting[~speech] = 0.03 + 0.002 * rng.random(60)
    rest = rest_in_silence(resting, speech, closed=0.03)
    busy = rest_in_silence(talking, speech, closed=0.03)
    assert rest["silence_opening_ratio"] < 1.2 and rest["silence_motion_ratio"] < 0.1
    assert busy["silence_opening_ratio"] > 3 and busy["silence_motion_ratio"] > 0.6


def test_cut_segment_is_frame_exact_with_its_audio(media_env, tmp_path):
    from tasks.audio import load_audio
    from tasks.decode import VideoSource
    from tasks.segment import cut_segment

    settings, storage, data, _ = media_env
    uri = str(data / "videos" / "speaker_map_5s.mp4")
    out = cut_segment(storage, uri, 50, 125, str(tmp_path / "tail.mp4"))
    with VideoSource(storage, uri) as src, VideoSource(storage, out) as cut:
        assert cut.n_frames == 75 and cut.size == src.size
        assert cut.timestamps[0] == pytest.approx(0, abs=1e-3)
        assert np.diff(cut.timestamps) == pytest.approx(np.diff(src.timestamps[50:125]), abs=2e-3)
        for k in (0, 40, 74):
            a, b = src.frame(50 + k).astype(float), cut.frame(k).astype(float)
            assert 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2)) > 38, k   # the same frame, near-losslessly
    assert load_audio(storage, out).duration_s == pytest.approx(3.0, abs=0.06)
    with pytest.raises(Exception, match="empty frame range"):
        cut_segment(storage, uri, 125, 125, str(tmp_path / "none.mp4"))
