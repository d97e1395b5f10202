"""Decoding and audio (both PyAV) on real clips and on broken files made here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.audio import Audio, envelope, load_audio, loudness_lufs, speech_envelope
from tasks.decode import FramePool, VideoSource
from tests.catalogs.media import make_bad_files, stage

STORAGE = Storage(Settings())


def ffprobe_frames(path: Path) -> tuple[int, list[float]]:
    """Frame count and presentation times as FFmpeg itself reports them, to check our decoder against."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    times = [float(x.strip().rstrip(",")) for x in out.split() if x.strip()]
    return len(times), times


@pytest.mark.parametrize("name,size", [
    ("interview_man_vfr_6s.mp4", (700, 700)),
    ("address_woman_mpeg4_8s.mp4", (512, 512)),
    ("vlog_woman_vertical_10s.mp4", (1080, 1920)),
    ("actor_1080p_4s.mp4", (1920, 1080)),
])
def test_clips_decode_with_right_counts_and_timestamps(shared_data, name, size):
    path = shared_data / "videos" / name
    n_ref, t_ref = ffprobe_frames(path)
    with VideoSource(STORAGE, str(path)) as v:
        assert v.n_frames == n_ref and v.size == size
        np.testing.assert_allclose(v.timestamps, np.array(t_ref) - t_ref[0], atol=2e-3)
        seen = 0
        for chunk in v.chunks(32):
            assert len(chunk.frames) <= 32 and chunk.frames.dtype == np.uint8
            assert chunk.frames.shape[1:] == (size[1], size[0], 3)
            seen += len(chunk.frames)
        assert seen == n_ref
        assert v.is_vfr == (name == "interview_man_vfr_6s.mp4")


def ffmpeg_frames(path: Path, width: int, height: int, count: int, scale: str | None = None) -> np.ndarray:
    """The first ``count`` frames as FFmpeg's own command line decodes (and, with ``scale``, shrinks) them."""
    vf = ["-vf", scale] if scale else []
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), *vf, "-frames:v", str(count), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(count, height, width, 3)


def test_frames_are_ffmpegs_own_and_a_seek_lands_on_the_same_frame(shared_data):
    path = shared_data / "videos" / "speaker_map_5s.mp4"
    expected = ffmpeg_frames(path, 844, 844, 80)
    with VideoSource(STORAGE, str(path)) as v:
        frames = np.concatenate([c.frames for c in v.chunks(32, stop=80)])
        assert np.array_equal(frames, expected)
        for i in (0, 37, 79):                       # random access seeks, then decodes forward
            assert np.array_equal(v.frame(i), expected[i])
        later = next(v.chunks(16, start=50))
        assert later.indices[0] == 50 and np.array_equal(later.frames, expected[50:66])


def test_one_frame_decoded_past_unreferenced_b_frames_is_the_streams_frame(shared_data):
    """``frame`` skips the B-frames nothing refers to on its way from the keyframe: an HEVC phone
    clip with three B-frames between P-frames and a 250-frame GOP, at a B-frame late in the GOP."""
    path = shared_data / "videos" / "kitchen_man_vertical_20s.mp4"
    with VideoSource(STORAGE, str(path)) as v:
        wanted = (245, 246, 247, 251)
        chunk = next(v.chunks(16, start=240, max_side=640))
        for i in wanted:
            expected = chunk.frames[list(chunk.indices).index(i)]
            skipping = v._decode_one(i, 640)          # the skipping decode itself, not the fallback behind it
            assert skipping is not None and np.array_equal(skipping, expected)
            assert np.array_equal(v.frame(i, max_side=640), expected)


def test_shrunk_frames_and_chunks_capped_in_megabytes(shared_data):
    path = shared_data / "videos" / "vlog_woman_vertical_10s.mp4"      # 1080 x 1920
    with VideoSource(STORAGE, str(path)) as v:
        chunk = next(v.chunks(64, max_side=960, chunk_mb=100))
        assert chunk.frames.shape == (64, 960, 540, 3) and v.scale_of(960) == (2.0, 2.0)
        small = ffmpeg_frames(path, 540, 960, 4, "scale=540:960:flags=area")
        assert np.abs(chunk.frames[:4].astype(int) - small).mean() < 2.0   # FFmpeg's area scaler, to rounding
        assert next(v.chunks(64, max_side=960)).frames.shape[0] == 32   # 1.5 MB frames in the default 48 MB
        full = next(v.chunks(64, chunk_mb=50))
        assert full.frames.shape == (8, 1920, 1080, 3)          # 8 frames of 6 MB fit in 50 MB, 64 would not


def test_vfr_resampled_to_constant_rate_only_when_asked(shared_data):
    path = str(shared_data / "videos" / "interview_man_vfr_6s.mp4")
    with VideoSource(STORAGE, path, resample_fps=25) as v:
        assert abs(v.n_frames - 6.1 * 25) <= 1  # the clip's 6.1 s at a constant 25 fps
        assert np.allclose(np.diff(v.timestamps), 1 / 25)
        idx = v._source_index
        assert np.all(np.diff(idx) >= 0) and len(set(idx.tolist())) < v.n_frames  # frames repeated, never invented


def test_rotated_phone_clip_is_upright(shared_data, tmp_path):
    files = make_bad_files(shared_data, tmp_path)
    rotated = files["rotated.mp4"]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(rotated), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout  # ffmpeg autorotates
    expected = np.frombuffer(raw, np.uint8).reshape(1920, 1080, 3)
    with VideoSource(STORAGE, str(rotated)) as v:
        frame = v.frame(0)
    assert frame.shape == expected.shape == (1920, 1080, 3)
    mse = np.mean((frame.astype(float) - expected.astype(float)) ** 2)
    assert mse < 255 ** 2 / 10 ** 3.5  # PSNR above 35 dB against FFmpeg's own upright frame


def test_broken_files_raise_typed_errors(shared_data, tmp_path):
    files = make_bad_files(shared_data, tmp_path)
    cases = {"zero_bytes.mp4": ErrorClass.EMPTY_FILE, "truncated.mp4": ErrorClass.DECODE_ERROR,
             "text_renamed.mp4": ErrorClass.DECODE_ERROR, "audio_only.mp4": ErrorClass.NO_VIDEO_STREAM}
    for name, cls in cases.items():
        with pytest.raises(ResyncError) as e:
            with VideoSource(STORAGE, str(files[name])):
                pass
        assert e.value.error_class == cls and name in str(e.value)
    with pytest.raises(ResyncError) as e:
        with VideoSource(STORAGE, str(tmp_path / "absent.mp4")):
            pass
    assert e.value.error_class == ErrorClass.MISSING_FILE


def test_a_file_cut_after_its_index_is_a_decode_error_not_frozen_frames(shared_data, tmp_path):
    """The index (moov first, +faststart) lists every frame but half the data is gone: decoding
    what is there and repeating its last frame would publish a dub that freezes halfway."""
    whole = tmp_path / "whole.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(shared_data / "videos" / "speaker_glasses_5s.mp4"), "-c", "copy",
                    "-movflags", "+faststart", str(whole)], check=True)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResyncError) as e:
        VideoSource(STORAGE, str(cut)).__enter__()      # opening reads the packets: it must refuse here
    assert e.value.error_class == ErrorClass.DECODE_ERROR and "truncated" in str(e.value)


def test_video_from_s3(s3_settings, shared_data):
    uris = stage(s3_settings, {"clip.mp4": shared_data / "videos" / "speaker_map_5s.mp4"})
    with VideoSource(Storage(s3_settings), uris["clip.mp4"]) as v:
        assert v.n_frames == 125 and next(v.chunks(8)).frames.shape == (8, 844, 844, 3)


def test_audio_from_any_container_as_16k_mono(shared_data):
    a = load_audio(STORAGE, str(shared_data / "videos" / "speaker_map_5s.mp4"))  # AAC 44.1 kHz stereo
    assert a.sample_rate == 16000 and a.samples.ndim == 1 and a.samples.dtype == np.float32
    assert a.duration_s == pytest.approx(5.0, abs=0.05)
    w = load_audio(STORAGE, str(shared_data / "audio" / "french1.wav"))
    assert w.duration_s == pytest.approx(6.864, abs=0.01)
    assert load_audio(STORAGE, str(shared_data / "edge" / "no_audio_stream_10s.mp4"), required=False) is None
    with pytest.raises(ResyncError) as e:
        load_audio(STORAGE, str(shared_data / "edge" / "no_audio_stream_10s.mp4"))
    assert e.value.error_class == ErrorClass.AUDIO_DECODE_ERROR


def test_broken_audio_is_an_audio_decode_error(shared_data, tmp_path):
    files = make_bad_files(shared_data, tmp_path)
    with pytest.raises(ResyncError) as e:
        load_audio(STORAGE, str(files["bad_audio.wav"]))
    assert e.value.error_class == ErrorClass.AUDIO_DECODE_ERROR


def test_loudness(shared_data):
    t = np.arange(16000 * 5) / 16000
    sine = Audio(np.sin(2 * np.pi * 997 * t).astype(np.float32), 16000)
    assert loudness_lufs(sine) == pytest.approx(-3.0, abs=0.2)  # BS.1770: full-scale 997 Hz sine = -3.01 LUFS
    quiet = Audio((0.1 * sine.samples).astype(np.float32), 16000)
    assert loudness_lufs(quiet) == pytest.approx(loudness_lufs(sine) - 20, abs=0.1)
    silent = load_audio(STORAGE, str(shared_data / "edge" / "silent_track_expressions_7s.mp4"))
    assert loudness_lufs(silent) < -70
    speech = load_audio(STORAGE, str(shared_data / "audio" / "german1.wav"))
    assert -40 < loudness_lufs(speech) < -10


def test_envelope_follows_real_timestamps():
    sr = 16000
    x = np.zeros(sr * 2, np.float32)
    x[sr:] = 0.5  # silence for 1 s, then a constant
    ts = np.array([0.0, 0.5, 0.9, 1.2, 1.5])  # variable frame durations
    env = envelope(Audio(x, sr), ts)
    assert env[0] == 0 and env[1] == 0 and env[3] == pytest.approx(0.5) and 0 < env[2] < 0.5


def test_an_odd_frame_size_is_encoded_at_that_size(shared_data, tmp_path):
    """853x481 (a 4:4:4 H.264 source, as FFmpeg scales it): the dub's encode and mux keep every row
    and column (4:2:0 cannot hold an odd size, so such frames are encoded 4:4:4), and the last
    column and row are the source's, not dropped."""
    from tasks.encode import encode_h264
    from tasks.encode import mux_audio

    src = tmp_path / "odd.mp4"
    subprocess.run(["ffmpeg", "-y", "-v", "error", "-i", str(shared_data / "videos" / "speaker_map_5s.mp4"), "-t", "1",
                    "-vf", "scale=853:481", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-an", str(src)], check=True)
    with VideoSource(STORAGE, str(src)) as video:
        assert video.size == (853, 481)
        frames = [f for chunk in video.chunks(16) for f in chunk.frames]
        fps = video.fps
    silent, out = tmp_path / "silent.mp4", tmp_path / "out.mp4"
    assert encode_h264(str(silent), iter(frames), fps) == len(frames)
    mux_audio(str(silent), None, str(out))
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                            "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=True).stdout.strip()
    assert probe == "853,481"
    with VideoSource(STORAGE, str(out)) as video:
        assert video.size == (853, 481) and video.n_frames == len(frames)
        again = video.frame(0).astype(float)
    first = frames[0].astype(float)
    assert np.abs(again[:, -1] - first[:, -1]).mean() < 4 and np.abs(again[-1] - first[-1]).mean() < 4


def test_chunks_decode_into_recycled_buffers(shared_data):
    """A pool hands a chunk's buffer back for the next chunk of the same size (no fresh pages per
    chunk); the frames are the same as without it; views are never pooled."""
    path = shared_data / "videos" / "speaker_map_5s.mp4"
    with VideoSource(STORAGE, str(path)) as v:
        plain = [c.frames.copy() for c in v.chunks(16)]
        pool = FramePool(capacity=2)
        seen = set()
        for k, chunk in enumerate(v.chunks(16, buffers=pool)):
            assert np.array_equal(chunk.frames, plain[k])
            if len(chunk.frames) == 16:
                seen.add(chunk.frames.__array_interface__["data"][0])
            pool.put(chunk.frames)
            pool.put(chunk.frames[:1])            # a view: ignored
        assert len(plain) > 3 and len(seen) == 1


def test_the_speech_band_filter_in_blocks_equals_scipys_and_holds_a_block_of_samples():
    """An hour of audio went through scipy's sosfiltfilt as several float64 copies (8x the audio);
    the block-wise filter gives scipy's samples exactly and holds a few blocks."""
    import tracemalloc

    from scipy.signal import butter, sosfiltfilt

    from tasks.audio import sosfiltfilt_blocks

    sos = butter(4, [300, 3000], btype="band", fs=16000, output="sos")
    rng = np.random.default_rng(0)
    for n, block in [(40, 7), (5000, 64), (70_001, 4096)]:
        x = (rng.normal(size=n) * 0.2).astype(np.float32)
        expected = sosfiltfilt(sos, x.astype(np.float64)).astype(np.float32)
        assert np.array_equal(np.asarray(sosfiltfilt_blocks(sos, x, block=block)), expected)
    x = (rng.normal(size=16000 * 600) * 0.1).astype(np.float32)     # ten minutes, 38 MB
    tracemalloc.start()
    try:
        speech_envelope(Audio(x, 16000), np.arange(0, 600, 0.04))
        loudness_lufs(Audio(x, 16000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 60e6                  # scipy's whole-signal path peaked at 307 MB (8x), and grew with it


def test_a_speed_perturbed_voice_is_higher_or_lower_by_the_factor():
    """Speed perturbation scales every frequency (pitch and formants) by the factor and the duration
    by its inverse; the factor it returns is the exact one, so the video's times can follow it."""
    from tasks.audio import speed_perturbed

    sr = 16000
    t = np.arange(sr * 2) / sr
    x = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    for factor in (0.9, 1.1, 0.85, 1.15):
        y, exact = speed_perturbed(x, factor)
        assert abs(exact - factor) < 0.01 and y.dtype == np.float32
        assert abs(len(y) - len(x) / exact) <= 1
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        peak_hz = np.argmax(spectrum) * sr / len(y)
        assert abs(peak_hz - 200 * exact) < 2, (factor, peak_hz)
    same, one = speed_perturbed(x, 1.0)
    assert one == 1.0 and np.array_equal(same, x)
    with pytest.raises(ValueError, match="outside"):
        speed_perturbed(x, 3.0)
