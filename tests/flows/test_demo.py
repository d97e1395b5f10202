"""flows.demo's media for a machine without ../shared/data: a still portrait the dub can redraw."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from catalogs.settings import Settings
from catalogs.storage import Storage
from flows.demo import synthesize_media
from tasks.dub_plan import usable_frames
from tasks.track import track_video


def test_the_synthesized_portrait_has_a_face_large_enough_to_redraw(tmp_path):
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed here (infra/bootstrap.sh installs it with apt)")
    videos, audio = synthesize_media(tmp_path / "media")
    assert set(audio) and all(p.stat().st_size > 0 for p in audio.values())
    (video, _), = videos.values()
    settings = Settings(root=str(tmp_path / "root"), allowed_roots=[str(tmp_path)])
    track = track_video(Storage(settings), settings, str(video))
    assert not track.flags["small_face"].any()              # at 512 px every frame was a small face
    assert np.all(usable_frames(track, str(video)))
