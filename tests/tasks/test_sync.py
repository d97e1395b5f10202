"""The sync expert's calibration on the unseen speakers of ../shared/data/videos/ (it trained on
train/ only; QA's thresholds were set on its held-out train/ speakers).

Every clip with its own audio is on time (within QA's offset threshold; 7 of 9 within a frame, two
at -2) with a confidence above QA's threshold; its audio
shifted by 10 frames either way moves the offset found by 10 (+-1); another clip's audio and a
frozen mouth fall below the threshold.
"""

from __future__ import annotations

import pytest

from tasks.audio import load_audio
from tasks.dub_plan import fit_audio_length, video_duration
from tasks.sync import calibration, load_sync_expert
from tasks.train import track_for

CLIPS = ["actor_1080p_4s", "address_man_10s", "address_man_long_60s", "address_woman_mpeg4_8s", "interview_man_vfr_6s",
         "kitchen_man_vertical_20s", "speaker_glasses_5s", "speaker_map_5s", "vlog_woman_vertical_10s"]


@pytest.fixture(scope="module")
def clips(media_env):
    settings, storage, data, _ = media_env
    out = {}
    for name in CLIPS:
        uri = str(data / "videos" / f"{name}.mp4")
        out[name] = (track_for(storage, settings, uri), load_audio(storage, uri).samples)
    return out


def test_the_expert_is_calibrated_on_unseen_speakers(media_env, clips):
    settings = media_env[0]
    expert = load_sync_expert()[0]
    threshold = settings.qa_min_av_confidence
    rows = {}
    for k, (name, (track, samples)) in enumerate(clips.items()):
        seconds = video_duration(track)
        other = clips[CLIPS[(k + 1) % len(CLIPS)]][1]
        rows[name] = calibration(expert, track.raw, track.timestamps, track.fps, fit_audio_length(samples, seconds),
                                 fit_audio_length(other, seconds))
    print("\nclip: own offset, confidence; offsets with the audio 10 late, 10 early; confidence of other audio, frozen")
    for name, r in rows.items():
        print(name, r["own"].offset_frames, round(r["own"].confidence, 3), r["late"].offset_frames,
              r["early"].offset_frames, round(r["other"].confidence, 3), round(r["frozen"].confidence, 3))
    for name, r in rows.items():
        own = r["own"].offset_frames
        assert abs(own) <= settings.qa_max_av_offset_frames and r["own"].confidence > threshold, (name, r["own"])
        # sound 10 frames late: the mouth leads it by 10 more (-10); early: it lags by 10 more (+10)
        assert abs(r["late"].offset_frames - own + 10) <= 1 and abs(r["early"].offset_frames - own - 10) <= 1, name
        assert r["other"].confidence < threshold and r["frozen"].confidence < threshold, (name, r["other"], r["frozen"])
    assert sum(abs(r["own"].offset_frames) <= 1 for r in rows.values()) >= 7
