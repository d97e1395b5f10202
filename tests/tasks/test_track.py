"""Face tracking on real clips: coverage, smoothing, dynamics, crops, flags, speakers, cuts, artifacts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks import track_artifact
from tasks.audio import load_audio
from tasks.decode import VideoSource
from tasks.geometry import paste_back, to_image, warp_crop
from tasks.landmarks import LIPS, STABLE, mouth_opening
from tasks.speech import SpeechTimer
from tasks.track import TrackResult, track_cached, track_video
from tests.catalogs.media import stage
from tests.conftest import SHARED_DATA, run_ffmpeg

SETTINGS = Settings()
STORAGE = Storage(SETTINGS)
CLIPS = sorted(p.name for p in (SHARED_DATA / "videos").glob("*.mp4")) if SHARED_DATA.is_dir() else []
_cache: dict[str, TrackResult] = {}


def tracked(path: Path) -> TrackResult:
    """Each clip is tracked once per test session."""
    if str(path) not in _cache:
        _cache[str(path)] = track_video(STORAGE, SETTINGS, str(path))
    return _cache[str(path)]


def stable_jitter(points: np.ndarray, face_px: np.ndarray) -> np.ndarray:
    """Per-frame acceleration of the skull points, in face widths: what a viewer sees as shake."""
    acc = points[2:, STABLE, :2] - 2 * points[1:-1, STABLE, :2] + points[:-2, STABLE, :2]
    return np.abs(acc).mean((1, 2)) / face_px[1:-1]


@pytest.mark.parametrize("clip", CLIPS)
def test_every_clip_is_tracked_smoothed_and_aligned(shared_data, clip):
    r = tracked(shared_data / "videos" / clip)
    assert r.n_frames > 0 and r.valid.mean() >= 0.95
    assert r.raw.shape == (r.n_frames, 478, 3) and r.template.shape == (478, 3)

    # smoothing removes jitter where the head is still
    raw_j, smooth_j = stable_jitter(r.raw, r.face_px), stable_jitter(r.smoothed, r.face_px)
    still = raw_j <= np.nanpercentile(raw_j, 30)
    assert np.nanmean(smooth_j[still]) < 0.8 * np.nanmean(raw_j[still])

    # pose is removed: what is left in canonical space moves at the lips, not at the skull
    lips = r.displacements[:, LIPS].std(0).mean()
    skull = r.displacements[:, STABLE].std(0).mean()
    assert lips > 2.5 * skull

    # the inverse mapping reproduces the landmarks
    i = int(np.flatnonzero(r.valid)[len(np.flatnonzero(r.valid)) // 2])
    back = to_image(r.canonical()[i].astype(np.float64), r.pose(i))
    assert np.abs(back - r.smoothed[i]).max() < 1e-2 * r.face_px[i]

    # crop then inverse warp: PSNR above 35 dB inside the face
    with VideoSource(STORAGE, str(shared_data / "videos" / clip)) as v:
        frame = v.frame(i)
    crop = warp_crop(frame, r.crop[i], SETTINGS.crop_size)
    assert crop.shape == (256, 256, 3)
    back_img, cover = paste_back(crop, r.crop[i], frame.shape[:2])
    face = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(r.smoothed[i][:, :2].astype(np.int32)), 1)
    inside = face.astype(bool) & cover
    mse = np.mean((frame[inside].astype(float) - back_img[inside].astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) > 35


@pytest.mark.parametrize("clip", ["address_man_10s.mp4", "interview_man_vfr_6s.mp4", "kitchen_man_vertical_20s.mp4"])
def test_lips_move_more_in_speech_than_in_silence(shared_data, clip):
    """The clips with over a second of silence (by VAD on their own audio)."""
    path = shared_data / "videos" / clip
    r = tracked(path)
    timing = SpeechTimer(SETTINGS).timing(load_audio(STORAGE, str(path)), transcribe=False)
    centres = r.timestamps + 0.5 / r.fps
    speech = np.zeros(r.n_frames, bool)
    for a, b in timing.segments:
        speech |= (centres >= a) & (centres < b)
    assert (~speech).sum() >= r.fps  # at least a second of silence to compare with
    motion = np.abs(np.diff(mouth_opening(r.canonical())))
    in_speech = speech[1:] & speech[:-1]
    in_silence = ~speech[1:] & ~speech[:-1]
    assert motion[in_speech].mean() > 1.1 * motion[in_silence].mean()


def test_edge_clips_give_the_right_flags(shared_data):
    tiny = tracked(shared_data / "edge" / "tiny_face_fullbody_4s.mp4")
    assert tiny.valid.mean() >= 0.9 and tiny.flags["small_face"][tiny.valid].mean() >= 0.9  # found, and flagged

    for clip in ("anime_no_audio_11s.mp4", "no_audio_stream_10s.mp4"):
        r = tracked(shared_data / "edge" / clip)  # no audio stream: tracked, speaker chosen without audio
        assert r.valid.mean() >= 0.95 and all(t.speech_correlation is None for t in r.tracks)
    music = tracked(shared_data / "edge" / "music_track_15s.mp4")  # mouthing to music: tracked like speech
    assert music.valid.mean() >= 0.95 and not music.flags["small_face"].any()
    silent = tracked(shared_data / "edge" / "silent_track_expressions_7s.mp4")  # audio present, digital silence
    assert silent.valid.mean() >= 0.95 and all(t.speech_correlation is None for t in silent.tracks)
    for r in (tiny, silent):
        assert not r.flags["extreme_pose"].any()
        summary = r.summary()
        assert summary["coverage"] == pytest.approx(float(r.valid.mean()), abs=1e-3)
        assert summary["small_face_frames"] == int(r.flags["small_face"].sum())


def test_no_face_is_a_typed_error(tmp_path):
    path = tmp_path / "pattern.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=1", "-pix_fmt", "yuv420p", str(path))
    with pytest.raises(ResyncError) as e:
        track_video(STORAGE, SETTINGS, str(path))
    assert e.value.error_class == ErrorClass.NO_FACE and "pattern.mp4" in str(e.value)


def _side_by_side(shared: Path, out: Path, audio_from: int) -> None:
    v = shared / "videos"
    run_ffmpeg("-i", str(v / "speaker_map_5s.mp4"), "-i", str(v / "speaker_glasses_5s.mp4"), "-filter_complex",
               "[0:v]scale=-2:480,setsar=1[a];[1:v]scale=-2:480,setsar=1[b];[a][b]hstack=inputs=2[v]",
               "-map", "[v]", "-map", f"{audio_from}:a", "-t", "4.8", "-c:v", "libx264", "-c:a", "aac", str(out))


def test_two_faces_get_stable_ids_and_the_speaker_is_found_by_audio(shared_data, tmp_path):
    path = tmp_path / "two_faces.mp4"
    _side_by_side(shared_data, path, audio_from=0)  # the man on the left (the smaller face) is heard
    r = track_video(STORAGE, SETTINGS, str(path))
    long_tracks = [t for t in r.tracks if t.coverage > 0.9]
    assert len(long_tracks) == 2  # each face kept one id over the whole clip
    assert all(len(f) >= 2 for f in r.faces[5:-5])  # every track is exposed, frame by frame
    ids = {t.track_id for t in long_tracks}
    assert all(ids <= {f[0] for f in fr} for fr in r.faces[5:-5])
    speaker = next(t for t in r.tracks if t.track_id == r.speaker_track)
    assert speaker.mean_face_px < max(t.mean_face_px for t in long_tracks)  # not simply the largest face
    assert np.nanmean(r.smoothed[:, :, 0]) < 640 / 2 + 10  # the left half of the frame


def test_cut_is_detected_and_the_face_reacquired(shared_data, tmp_path):
    v = shared_data / "videos"
    path = tmp_path / "cut.mp4"
    run_ffmpeg("-i", str(v / "speaker_map_5s.mp4"), "-i", str(v / "speaker_glasses_5s.mp4"), "-filter_complex",
               "[0:v]trim=0:2,setpts=PTS-STARTPTS,scale=512:512,setsar=1[a];"
               "[1:v]trim=0:2,setpts=PTS-STARTPTS,scale=512:512,setsar=1[b];[a][b]concat=n=2:v=1[v]",
               "-map", "[v]", "-r", "25", "-c:v", "libx264", str(path))
    r = track_video(STORAGE, SETTINGS, str(path))
    assert any(abs(c - 50) <= 1 for c in r.cut_frames)
    assert r.valid.mean() >= 0.95  # re-acquired after the cut
    assert len([t for t in r.tracks if t.frames >= 40]) == 2  # a new shot, a new track
    assert [(a, b) for a, b, _ in r.shots] == [(0, r.cut_frames[0]), (r.cut_frames[0], r.n_frames)]
    assert r.shots[0][2] != r.shots[1][2] and r.templates.shape == (2, 478, 3)  # each shot's own speaker and template


def test_face_is_reacquired_after_a_loss(shared_data, tmp_path):
    path = tmp_path / "blackout.mp4"
    run_ffmpeg("-i", str(shared_data / "videos" / "speaker_glasses_5s.mp4"), "-vf",
               "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(t,1.6,2.4)'", "-c:v", "libx264", str(path))
    r = track_video(STORAGE, SETTINGS, str(path))
    lost = r.flags["no_face"]
    t = r.timestamps
    assert lost[(t > 1.7) & (t < 2.3)].all()         # nothing to see during the blackout
    assert r.valid[(t > 2.5)].mean() >= 0.95          # found again right after it
    assert r.valid[(t < 1.5)].mean() >= 0.95


def test_artifact_round_trip_and_reuse(settings, shared_data):
    storage = Storage(settings)
    uris = stage(settings, {"clip.mp4": shared_data / "videos" / "speaker_glasses_5s.mp4"})
    sha = storage.sha256(uris["clip.mp4"])
    r, art, reused = track_cached(storage, settings, uris["clip.mp4"], sha)
    assert not reused and art.endswith(".parquet") and sha in art and storage.exists(art)
    again, art2, reused2 = track_cached(storage, settings, uris["clip.mp4"], sha)
    assert reused2 and art2 == art
    assert again.shots == r.shots
    assert [[f[0] for f in fr] for fr in again.faces] == [[f[0] for f in fr] for fr in r.faces]
    for name in ("raw", "smoothed", "displacements", "rotation", "translation", "crop", "templates", "timestamps"):
        np.testing.assert_allclose(np.nan_to_num(getattr(again, name)), np.nan_to_num(getattr(r, name)), rtol=1e-6, atol=1e-4)
    assert again.summary() == r.summary() and again.flags.keys() == r.flags.keys()
    # another tracker setting is another artifact
    _, art3, reused3 = track_cached(storage, settings.model_copy(update={"smooth_beta": 5.0}), uris["clip.mp4"], sha)
    assert art3 != art and not reused3


def test_track_cli_writes_artifact_and_preview(shared_data, tmp_path):
    out, prev = tmp_path / "t.parquet", tmp_path / "preview.mp4"
    import sys
    res = subprocess.run([str(Path(sys.executable).parent / "resync"), "track", str(shared_data / "videos" / "speaker_map_5s.mp4"),
                          "-o", str(out), "--preview", str(prev)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "coverage" in res.stdout and "small_face_frames" in res.stdout
    r = track_artifact.load(STORAGE, str(out))
    assert r.n_frames == 125
    with VideoSource(STORAGE, str(prev)) as v:
        assert v.n_frames == 125 and v.size == (844, 844)
        # the mesh is drawn: the preview differs from the source inside the face
        with VideoSource(STORAGE, str(shared_data / "videos" / "speaker_map_5s.mp4")) as src:
            a, b = v.frame(60).astype(float), src.frame(60).astype(float)
        x0, y0, x1, y1 = (int(c) for c in (*r.smoothed[60, :, :2].min(0), *r.smoothed[60, :, :2].max(0)))
        assert np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean() > 10


def test_segments_tracked_at_once_join_into_the_same_tracks(shared_data, tmp_path):
    """A video tracked as two segments at once (what long videos get) gives the tracks, cuts and
    landmarks of one pass: faces keep their ids across the boundary, a cut right at it is seen."""
    split = Settings(tracking_segments=2, min_segment_frames=20)
    two = tmp_path / "two_faces.mp4"
    _side_by_side(shared_data, two, audio_from=0)
    whole, halves = track_video(STORAGE, SETTINGS, str(two)), track_video(STORAGE, split, str(two))
    assert len([t for t in halves.tracks if t.coverage > 0.9]) == 2  # both faces continue through the boundary
    assert halves.speaker_track == whole.speaker_track
    both = whole.valid & halves.valid
    assert both.mean() > 0.95
    gap = np.abs(whole.smoothed[both, :, :2] - halves.smoothed[both, :, :2]).mean((1, 2)) / whole.face_px[both]
    assert np.median(gap) < 0.01 and gap.max() < 0.05  # the same landmarks, within a few hundredths of a face

    v = shared_data / "videos"
    cut = tmp_path / "cut.mp4"  # 100 frames, cut at 50: exactly the boundary of two segments
    run_ffmpeg("-i", str(v / "speaker_map_5s.mp4"), "-i", str(v / "speaker_glasses_5s.mp4"), "-filter_complex",
               "[0:v]trim=0:2,setpts=PTS-STARTPTS,scale=512:512,setsar=1[a];"
               "[1:v]trim=0:2,setpts=PTS-STARTPTS,scale=512:512,setsar=1[b];[a][b]concat=n=2:v=1[v]",
               "-map", "[v]", "-r", "25", "-c:v", "libx264", str(cut))
    r = track_video(STORAGE, split, str(cut))
    assert r.cut_frames == [50] and len([t for t in r.tracks if t.frames >= 40]) == 2


def test_tracker_chunk_size_changes_nothing_it_finds(shared_data):
    """The tracker's decoder hands frames over a few at a time (``tracking_chunk``): chunk edges,
    segment edges and the frame that primes a segment's cut detector fall anywhere, and the landmarks
    are exactly those of large chunks."""
    clip = str(shared_data / "videos" / "speaker_map_5s.mp4")
    large = track_video(STORAGE, Settings(tracking_segments=2, min_segment_frames=20, tracking_chunk=64), clip)
    small = track_video(STORAGE, Settings(tracking_segments=2, min_segment_frames=20, tracking_chunk=3), clip)
    assert small.valid.sum() > 100 and np.array_equal(small.valid, large.valid)
    assert np.array_equal(small.smoothed, large.smoothed, equal_nan=True)
    assert small.cut_frames == large.cut_frames


def test_track_spans_summarise_shots_as_whole_video_arrays_did():
    """Each face track is held over its own frames only (a video of many shots has many tracks),
    its landmarks on disk and two numbers a frame in memory; presence, size and the lagged speech
    correlation per shot are what one whole-video array per track gave."""
    from tasks.facemesh import FaceObservation, LandmarkLog, Track
    from tasks.landmarks import N_LANDMARKS
    from tasks.track import TrackSpan, _correlation, _summaries

    rng = np.random.default_rng(3)
    n = 300
    speech = rng.random(n)
    log = LandmarkLog(capacity=16)
    base = rng.normal(100, 20, (N_LANDMARKS, 3)).astype(np.float32)
    tracks = []
    for tid, (a, b) in enumerate([(0, 120), (100, 300), (150, 160), (210, 290)]):
        frames = {i: FaceObservation(base + rng.normal(0, 2, base.shape).astype(np.float32) * (1 + speech[i]))
                  for i in range(a, b) if rng.random() > 0.1}
        for i in list(frames)[::2]:          # a tracker keeping history spills its landmarks to disk
            frames[i].spill(log)
        tracks.append(Track(tid, frames, max(frames)))
    dense = {}
    for t in tracks:
        pts = np.full((n, N_LANDMARKS, 3), np.nan, np.float32)
        for i, obs in t.frames.items():
            pts[i] = obs.points
        dense[t.track_id] = pts
    spans = {t.track_id: TrackSpan.of(t) for t in tracks}
    assert sum(s.points.nbytes for s in spans.values()) < 0.5 * sum(p.nbytes for p in dense.values())
    assert sum(s.width.nbytes + s.opening.nbytes for s in spans.values()) < 0.002 * sum(p.nbytes for p in dense.values())
    for a, b in [(0, n), (0, 150), (150, 300), (118, 125)]:
        got = {s.track_id: s for s in _summaries(spans, speech, a, b)}
        for tid, pts in dense.items():
            seg = pts[a:b]
            present = np.isfinite(seg[:, 0, 0])
            s = got[tid]
            assert s.frames == int(present.sum()) and s.coverage == pytest.approx(float(present.mean()))
            if present.any():
                widths = seg[present, :, 0].max(1) - seg[present, :, 0].min(1)
                assert s.mean_face_px == float(widths.mean())
            if present.any():
                assert s.speech_correlation == _correlation(mouth_opening(seg), speech[a:b])
    raw = np.full((n, N_LANDMARKS, 3), np.nan, np.float32)
    spans[1].copy_into(raw, 150, 300)
    assert np.array_equal(raw[150:], dense[1][150:], equal_nan=True) and np.isnan(raw[:150]).all()


def test_observations_spilled_to_disk_read_rescale_and_box_as_in_memory():
    """A tracker that keeps its tracks' history moves each observation's landmarks to a log on disk
    (an hour of one face was half a gigabyte of them); what it reads back, its box and a rescale
    are what the in-memory observation gives."""
    from tasks.facemesh import FaceObservation, LandmarkLog

    rng = np.random.default_rng(8)
    points = rng.normal(300, 80, (5, 478, 3)).astype(np.float32)
    log = LandmarkLog(capacity=2)
    kept = [FaceObservation(p.copy()) for p in points]
    spilled = [FaceObservation(p.copy()) for p in points]
    for o in spilled:
        o.spill(log)
    assert log.count == 5 and len(log.rows) == 8 and all(o._points is None for o in spilled)
    factor = np.array([1.5, 2.0, 1.5], np.float32)
    for step in range(2):
        for a, b in zip(kept, spilled):
            np.testing.assert_array_equal(a.points, b.points)
            assert a.box == b.box and a.width == b.width
        for o in kept + spilled:       # what FaceMeshTracker.rescale does to every observation
            o.points = o.points * factor
