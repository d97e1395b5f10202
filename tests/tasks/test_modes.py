"""Video-driven lip sync, speaking-style transfer and face swapping with the bundled base model, on real clips."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import model_store, modes
from tasks.audio import load_audio
from tasks.decode import VideoSource
from tasks.identity import FaceIdentity, swap_distances
from tasks.landmarks import mouth_opening
from tasks.lipsync import DubInputs, dub
from tasks.track import track_video


@pytest.fixture(scope="module")
def env(media_env):
    settings, storage, data, root = media_env
    model = model_store.load_model(settings)
    tracks = {n: track_video(storage, settings, str(data / "videos" / n))
              for n in ("speaker_map_5s.mp4", "speaker_glasses_5s.mp4", "address_man_long_60s.mp4",
                                   "address_woman_mpeg4_8s.mp4")}
    return settings, storage, model, model_store.features_for(settings, model), data, root, tracks


def test_mouth_width_and_retarget_alignment(env):
    *_, tracks = env
    target, driver = tracks["speaker_map_5s.mp4"], tracks["speaker_glasses_5s.mp4"]
    assert 0.5 < modes.mouth_width(target.template) < 1.5
    motion = modes.retarget(driver, target)
    assert motion.shape == target.displacements.shape and np.isfinite(motion).all()
    scale = modes.mouth_width(target.template) / modes.mouth_width(driver.template)
    # frame i of the target shows the driver's frame at the same time, scaled
    i = 60
    j = int(np.argmin(np.abs(driver.timestamps - target.timestamps[i])))
    assert np.allclose(motion[i], np.nan_to_num(driver.displacements[j]) * scale, atol=1e-5)
    # past the driver's end (4.9 s vs 5.0 s) the driver's most closed mouth is held
    assert np.allclose(motion[-1], motion[-2])


def test_video_driven_output_follows_the_driver(env):
    settings, storage, model, features, data, root, tracks = env
    target, driver = tracks["speaker_map_5s.mp4"], tracks["speaker_glasses_5s.mp4"]
    uri = str(data / "videos" / "speaker_map_5s.mp4")
    out = str(root / "driven.mp4")
    inputs = DubInputs(audio_uri=str(data / "videos" / "speaker_glasses_5s.mp4"),
                       displacements=modes.retarget(driver, target))
    result = dub(storage, settings, uri, inputs, out, model, features, target)
    assert result.frames == target.n_frames
    retracked = track_video(storage, settings, out)
    got = mouth_opening(retracked.smoothed)
    drv = np.interp(target.timestamps, driver.timestamps, mouth_opening(driver.smoothed))
    own = mouth_opening(target.smoothed)
    ok = np.isfinite(got) & np.isfinite(drv) & np.isfinite(own)
    with_driver = np.corrcoef(got[ok], drv[ok])[0, 1]
    with_original = np.corrcoef(got[ok], own[ok])[0, 1]
    assert with_driver > 0.5 and with_driver > with_original + 0.3, (with_driver, with_original)
    assert load_audio(storage, out).duration_s == pytest.approx(result.video_seconds, abs=0.06)


def test_style_source_changes_the_mouth_amplitude_its_way(env):
    """The same audio spoken in two speakers' styles: the livelier style opens the mouth wider."""
    settings, storage, model, features, data, root, tracks = env
    target = tracks["speaker_map_5s.mp4"]
    uri = str(data / "videos" / "speaker_map_5s.mp4")
    sources = {n: tracks[n] for n in ("address_woman_mpeg4_8s.mp4", "address_man_long_60s.mp4")}
    own_amp = {n: float(np.nanstd(mouth_opening(t.canonical()))) for n, t in sources.items()}
    amp = {}
    for n, t in sources.items():
        style = modes.style_from_track(t, model.config.syncformer.style_window)
        r = dub(storage, settings, uri, DubInputs(str(data / "audio" / "english_vlog_10s.wav"), style_displacements=style),
                str(root / f"style_{n}"), model, features, target, model_store.feature_cache(settings))
        amp[n] = float(np.std(r.predicted_opening))
    lively, calm = sorted(own_amp, key=own_amp.get, reverse=True)
    assert amp[lively] > amp[calm] * 1.1, (amp, own_amp)



def test_face_swap_redraws_the_whole_face_and_keeps_the_rest(env):
    """--reference-from rewires the generator's style path to another person and redraws the whole
    face (eyes included) on that person's face shape; background, frames and audio rules are kept."""
    settings, storage, model, features, data, root, tracks = env
    source, ref = tracks["speaker_map_5s.mp4"], tracks["speaker_glasses_5s.mp4"]
    uri, ref_uri = str(data / "videos" / "speaker_map_5s.mp4"), str(data / "videos" / "speaker_glasses_5s.mp4")
    identity = modes.reference_from_video(storage, ref, ref_uri, model.size, settings.crop_size)
    assert identity.crop.shape == (model.size, model.size, 3) and identity.template.shape == (478, 3)
    out = str(root / "swap.mp4")
    result = dub(storage, settings, uri, modes.swap_face(DubInputs(uri), identity), out, model, features, source)
    assert result.detail_factor == 0  # the source's skin texture is never kept on a swapped face
    assert result.frames == source.n_frames and result.rendered_frames > 0.9 * source.n_frames
    assert load_audio(storage, out).duration_s == pytest.approx(result.video_seconds, abs=0.06)
    with VideoSource(storage, uri) as a, VideoSource(storage, out) as b:
        src, got = a.frame(60).astype(float), b.frame(60).astype(float)
    p = source.smoothed[60]
    eyes = np.concatenate([p[[33, 133, 362, 263], :2]])
    (x0, y0), (x1, y1) = eyes.min(0).astype(int) - 4, eyes.max(0).astype(int) + 4
    assert np.abs(src[y0:y1, x0:x1] - got[y0:y1, x0:x1]).mean() > 6  # the eyes are redrawn too
    assert np.abs(src[:60, :60] - got[:60, :60]).mean() < 3           # the background is the source's


def test_face_swap_shows_the_reference_identity_with_the_source_pose(env):
    """speaker_map_5s shown with speaker_glasses_5s's identity: on most sampled frames the output's
    dlib descriptor is nearer the reference person than the source person, and the head pose
    (re-tracked) is the source's."""
    settings, storage, model, features, data, root, tracks = env
    source, ref = tracks["speaker_map_5s.mp4"], tracks["speaker_glasses_5s.mp4"]
    uri, ref_uri = str(data / "videos" / "speaker_map_5s.mp4"), str(data / "videos" / "speaker_glasses_5s.mp4")
    out = str(root / "swap_identity.mp4")
    dub(storage, settings, uri, modes.swap_face(DubInputs(uri), modes.reference_from_video(
        storage, ref, ref_uri, model.size, settings.crop_size)), out, model, features, source)
    retracked = track_video(storage, settings, out)
    to_reference, to_source = swap_distances(storage, FaceIdentity(), (out, retracked), (uri, source), (ref_uri, ref))
    assert len(to_reference) >= 0.8 * len(range(0, source.n_frames, 5))
    assert np.mean(to_reference < to_source) > 0.7 and to_reference.mean() < to_source.mean(), (to_reference, to_source)
    ok = retracked.valid & source.valid
    assert ok.mean() > 0.9
    assert np.abs(retracked.euler[ok] - source.euler[ok]).mean() < 3.0  # degrees: the pose is the source's
