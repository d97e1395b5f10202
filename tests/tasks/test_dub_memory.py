"""Peak memory of a dub does not grow with the video's length (issue 18).

A 1080p clip looped twice and six times (``ffmpeg -stream_loop N -c copy``), each dubbed
with its own audio by ``resync dub`` in its own process (``bench.long_video``, the benchmark's
code): the longer video's peak RSS must stay within 25% of the shorter one's. Holding the looped
clip's frames would add ~2 GB; only per-frame geometry (kilobytes a frame) may grow. A memory
assertion, not a timing one.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.long_video import dub_peak_rss, looped

REPO = Path(__file__).resolve().parents[2]


def test_peak_memory_of_a_dub_does_not_grow_with_length(shared_data, tmp_path):
    clip = shared_data / "videos" / "actor_1080p_4s.mp4"          # 1920 x 1080, 3.7 s
    env = {"RESYNC_ROOT": str(tmp_path / "root"), "RESYNC_ALLOWED_ROOTS": json.dumps([str(shared_data), str(tmp_path)]),
           "RESYNC_FEATURE_CACHE_DIR": str(tmp_path / "features")}
    # the shorter video is two loops, not one: 112 frames (7 chunks) can end before every queue of
    # the pipeline has filled once, which would make any longer video look like it grows
    short_clip, long_clip = looped(clip, 2 * 3.7, 3.7, tmp_path), looped(clip, 6 * 3.7, 3.7, tmp_path)
    short, first = dub_peak_rss(short_clip, short_clip, tmp_path / "short.mp4", env, timeout=900)
    long, second = dub_peak_rss(long_clip, long_clip, tmp_path / "long.mp4", env, timeout=900)
    assert second["frames"] == 3 * first["frames"] and second["rendered_frames"] > 2 * first["rendered_frames"]
    assert long < 1.25 * short, f"peak RSS {short / 2**30:.2f} GB for {first['frames']} frames of 1080p, " \
                                f"{long / 2**30:.2f} GB for {second['frames']}"
    # the bound, with the eager generator the tests run (conftest), which holds a little more
    # than the compiled one: 2.46 GB here by hand, 2.67 GB with a busy core beside it
    assert long < 3.0 * 2**30, f"peak RSS {long / 2**30:.2f} GB at 1080p with the eager generator"


def test_the_peak_measured_is_the_dubs_own_not_its_parents(tmp_path):
    """A child started by Python's subprocess (vfork) inherits its parent's getrusage high-water
    mark through exec: inside a grown pytest process a 2.5-GB dub read 3.55 and 4.31 GB in CI.
    The benchmark's child reports its own address space's peak instead."""
    import subprocess
    import sys

    from bench.long_video import MEASURE

    ballast = bytearray(1 << 30)                     # the parent now peaks above 1 GB
    ballast[::4096] = b"\1" * len(range(0, 1 << 30, 4096))
    proc = subprocess.run([sys.executable, "-c", MEASURE, "--help"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    del ballast
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.strip().splitlines()[-1].split()[1])
    assert 20 << 20 < peak < 700 << 20, f"the child's --help peaked at {peak / 2**20:.0f} MB"


def test_planning_a_dub_holds_no_mesh_array_of_the_video(media_env):
    """What a dub plans for the whole video, before any pixel: the motion goes to disk a
    Style-SyncFormer window at a time (``FrameStore``), so the plan holds a few scalars a frame, and
    planning peaks at the whole track's audio features (384 floats at 50 Hz, about half a mesh a
    frame) plus blocks of constant size. A real track tiled to 16x and 64x its length; numpy's
    memory (tracemalloc) against the frame count, so the slope is what each frame of an hour-long
    video costs. Measured: held -0.02 and peak 1.40 meshes a frame (the peak's slope still carries
    Whisper's batches at these lengths: 0.64 over 200 and 800 s of audio). Two stops ago the plan
    held 1.9 meshes a frame and peaked at 15.6 (90 kB a frame: 8 GB for an hour); the last stop's
    held 0.9."""
    import dataclasses
    import tracemalloc

    import numpy as np

    from tasks import model_store
    from tasks.audio import load_audio
    from tasks.dub_plan import plan_dub
    from tasks.track import track_video

    settings, storage, data, _ = media_env
    clip = str(data / "videos" / "speaker_map_5s.mp4")
    track = track_video(storage, settings, clip)
    model = model_store.load_model(settings)
    features = model_store.features_for(settings, model)
    speech = load_audio(storage, str(data / "audio" / "english_commentary_60s.wav")).samples

    def tiled(k: int):
        n = track.n_frames * k
        rep = lambda a: np.concatenate([a] * k)  # noqa: E731
        long = dataclasses.replace(
            track, timestamps=np.arange(n) / track.fps, raw=rep(track.raw), smoothed=rep(track.smoothed),
            displacements=rep(track.displacements), scale=rep(track.scale), rotation=rep(track.rotation),
            translation=rep(track.translation), euler=rep(track.euler), crop=rep(track.crop), face_px=rep(track.face_px),
            residual=rep(track.residual), flags={f: rep(v) for f, v in track.flags.items()}, shots=[(0, n, track.speaker_track)],
            templates=track.templates[:1], cut_frames=[], faces=[])
        samples = np.resize(speech, int(round(n / track.fps * 16000))).astype(np.float32)
        return long, samples

    held, peak = {}, {}
    for k in (16, 64):
        long, samples = tiled(k)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        plan = plan_dub(settings, model, features, None, long, samples, clip)
        now, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        held[long.n_frames], peak[long.n_frames] = now - base, top - base
        assert plan.motion.shape == long.displacements.shape
    (n1, n2), mesh = sorted(held), track.displacements[0].nbytes           # 478 x 3 float32: 5.7 kB
    held_per_frame = (held[n2] - held[n1]) / (n2 - n1) / mesh
    peak_per_frame = (peak[n2] - peak[n1]) / (n2 - n1) / mesh
    assert held_per_frame < 0.15, f"the plan holds {held_per_frame:.2f} meshes a frame"
    assert peak_per_frame < 2.0, f"planning peaks at {peak_per_frame:.2f} meshes a frame"
