"""Speech timing of an audio track: where speech is, and optionally what is said and when each word falls.

Lip sync needs to know which video frames carry speech (mouth moving) and which are pauses, so every
call runs voice activity detection. Everything runs offline through whisperx:

- VAD: whisperx's pyannote segmentation model, which ships inside the whisperx wheel
  (``whisperx/assets/pytorch_model.bin``) and loads from that local file. It works offline, so the
  silero ONNX fallback of faster-whisper is not needed. pyannote.audio 4 sends usage telemetry to
  otel.pyannote.ai by default; this module switches it off (``PYANNOTE_METRICS_ENABLED=false``).
- ASR (when ``settings.asr_model_dir`` / ``RESYNC_ASR_MODEL_DIR`` names a local Whisper CTranslate2
  directory): ``whisperx.load_model`` with that path, CPU, int8, pyannote VAD.
- Word timings: with ``settings.align_model_dir`` (a local wav2vec2 CTC directory), the whisperx
  pipeline transcribes and ``whisperx.align`` aligns its segments. Without one, faster-whisper (the
  engine under whisperx) transcribes the VAD chunks with Whisper's own cross-attention word
  timestamps, in one decoding pass; the whisperx batched pipeline cannot give word times itself.

Nothing is downloaded: the Hugging Face hub is forced offline, only local paths are passed, and the
NLTK sentence splitter that ``whisperx.align`` would download is replaced by an untrained Punkt one
when the NLTK data is not installed.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers / pyannote: no downloads, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from tasks.audio import SAMPLE_RATE, Audio

VAD_ONSET = 0.500     # whisperx defaults: start speech above this score ...
VAD_OFFSET = 0.363    # ... and end it below this one (hysteresis)
MIN_SPEECH_S = 0.1    # drop speech blips shorter than this
MIN_GAP_S = 0.1       # merge speech separated by pauses shorter than this
CHUNK_S = 30.0        # Whisper's window: speech is transcribed in chunks up to this long


@dataclass(frozen=True)
class Word:
    text: str
    start: float   # seconds
    end: float     # seconds
    score: float | None = None   # alignment score or Whisper word probability, in [0, 1]


@dataclass
class SpeechTiming:
    segments: list[tuple[float, float]]          # merged speech regions (start, end) in seconds
    words: list[Word] = field(default_factory=list)   # empty without ASR
    transcript: str | None = None                # None when no ASR ran
    language: str | None = None                  # None when no ASR ran

    @property
    def speech_s(self) -> float:
        return float(sum(e - s for s, e in self.segments))

    def speech_mask(self, fps: float, n_frames: int) -> np.ndarray:
        """Boolean per video frame: True where the frame's centre time falls inside a speech segment.

        Frame i covers [i/fps, (i+1)/fps), as in ``tasks.audio.envelope``; the centre decides, so a
        segment boundary inside a frame counts that frame for the side holding most of it."""
        centres = (np.arange(n_frames) + 0.5) / fps
        mask = np.zeros(n_frames, dtype=bool)
        for start, end in self.segments:
            mask |= (centres >= start) & (centres < end)
        return mask


class SpeechTimer:
    """Holds the loaded models for one process: a worker times many items, and loading costs seconds."""

    def __init__(self, settings: Settings, *, threads: int | None = None, batch_size: int = 8) -> None:
        self.settings = settings
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.batch_size = batch_size
        self._vad: Any = None
        self._asr: Any = None                    # whisperx FasterWhisperPipeline
        self._align: tuple[Any, dict] | None = None

    # --- public ---------------------------------------------------------------------------
    def timing(self, audio: Audio, *, transcribe: bool | None = None, language: str | None = None) -> SpeechTiming:
        """Speech segments always; transcript and words when ``transcribe`` (default: when an ASR model is configured).

        ``language`` (ISO code) skips Whisper's language detection when the caller knows it."""
        if transcribe is None:
            transcribe = self.settings.asr_model_dir is not None
        samples = _as_16k(audio)
        segments = self.speech_segments(samples)
        if not transcribe:
            return SpeechTiming(segments=segments)
        asr = self._load_asr()   # raises when unconfigured, even for silence: the caller asked for ASR
        if not segments:
            lang = language or (None if asr.model.model.is_multilingual else "en")
            return SpeechTiming(segments=[], words=[], transcript="", language=lang)
        if self.settings.align_model_dir:
            return self._transcribe_aligned(samples, segments, language)
        return self._transcribe_whisper_words(samples, segments, language)

    def speech_segments(self, samples: np.ndarray) -> list[tuple[float, float]]:
        """Merged speech regions of 16 kHz mono samples, by whisperx's pyannote VAD."""
        if len(samples) < SAMPLE_RATE // 10:   # under 0.1 s: nothing to detect
            return []
        from whisperx.vads.pyannote import Binarize, Pyannote

        vad = self._load_vad()
        scores = vad({"waveform": Pyannote.preprocess_audio(samples), "sample_rate": SAMPLE_RATE})
        active = Binarize(onset=VAD_ONSET, offset=VAD_OFFSET,
                          min_duration_on=MIN_SPEECH_S, min_duration_off=MIN_GAP_S)(scores)
        duration = len(samples) / SAMPLE_RATE
        out = []
        for seg in active.get_timeline().support():
            start, end = max(0.0, seg.start), min(duration, seg.end)
            if end > start:
                out.append((round(start, 3), round(end, 3)))
        return out

    # --- loading --------------------------------------------------------------------------
    def _load_vad(self) -> Any:
        if self._vad is None:
            import torch
            from whisperx.vads.pyannote import Pyannote

            # model_fp=None: the segmentation checkpoint bundled in the whisperx package.
            self._vad = Pyannote(torch.device("cpu"), token=None, vad_onset=VAD_ONSET)
        return self._vad

    def _load_asr(self) -> Any:
        if self._asr is not None:
            return self._asr
        model_dir = self.settings.asr_model_dir
        if not model_dir:
            raise ResyncError(ErrorClass.MODEL_ERROR, "transcription needs a Whisper model: set RESYNC_ASR_MODEL_DIR "
                              "(settings.asr_model_dir) to a local CTranslate2 Whisper directory (model.bin, "
                              "config.json, tokenizer.json)")
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise ResyncError(ErrorClass.MODEL_ERROR, f"ASR model directory {model_dir} does not exist "
                              "(RESYNC_ASR_MODEL_DIR)")
        missing = [f for f in ("model.bin", "config.json", "tokenizer.json") if not (path / f).is_file()]
        if missing:
            # Without tokenizer.json faster-whisper would fetch one from the hub.
            raise ResyncError(ErrorClass.MODEL_ERROR, f"ASR model directory {model_dir} is not a CTranslate2 Whisper "
                              f"model: missing {', '.join(missing)} (RESYNC_ASR_MODEL_DIR)")
        import whisperx
        from whisperx.asr import WhisperModel

        try:
            model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=self.threads,
                                 local_files_only=True)
            # An English-only model (tiny.en) has no language detection: fix its language.
            language = None if model.model.is_multilingual else "en"
            # vad_model: share the one VAD instance (whisperx then ignores vad_method and prints a note).
            self._asr = whisperx.load_model(str(path), device="cpu", compute_type="int8", vad_method="pyannote",
                                            vad_model=self._load_vad(), model=model, language=language,
                                            threads=self.threads, local_files_only=True)
        except Exception as e:  # ctranslate2 raises RuntimeError/ValueError for bad model files
            raise ResyncError(ErrorClass.MODEL_ERROR, f"ASR model in {model_dir} does not load "
                              f"({type(e).__name__}: {e})") from e
        return self._asr

    def _load_align(self, language: str) -> tuple[Any, dict]:
        if self._align is not None and self._align[1]["language"] == language:
            return self._align
        model_dir = self._check_align_dir()
        import whisperx

        _offline_sentence_splitter()
        try:
            model, meta = whisperx.load_align_model(language_code=language, device="cpu", model_name=model_dir,
                                                    model_cache_only=True)
        except Exception as e:  # whisperx prints the cause and raises ValueError
            raise ResyncError(ErrorClass.MODEL_ERROR, f"alignment model directory {model_dir} is not a loadable "
                              f"wav2vec2 CTC model with its processor ({type(e).__name__}: {e}) "
                              "(RESYNC_ALIGN_MODEL_DIR)") from e
        self._align = (model, meta)
        return self._align

    def _check_align_dir(self) -> str:
        """Fail before transcribing, not after, when the alignment directory cannot be a model."""
        model_dir = self.settings.align_model_dir
        assert model_dir, "only called with an align model configured"
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise ResyncError(ErrorClass.MODEL_ERROR, f"alignment model directory {model_dir} does not exist "
                              "(RESYNC_ALIGN_MODEL_DIR)")
        if not (path / "config.json").is_file():
            raise ResyncError(ErrorClass.MODEL_ERROR, f"alignment model directory {model_dir} holds no config.json: "
                              "not a wav2vec2 CTC model saved with save_pretrained (RESYNC_ALIGN_MODEL_DIR)")
        return str(path)

    # --- transcription --------------------------------------------------------------------
    def _transcribe_whisper_words(self, samples: np.ndarray, segments: list[tuple[float, float]],
                                  language: str | None) -> SpeechTiming:
        """One faster-whisper pass over the VAD chunks, with Whisper's own word timestamps."""
        asr = self._load_asr()
        clips = [t for start, end in _chunks(segments, CHUNK_S) for t in (start, end)]
        lang = language or asr.preset_language
        try:
            result, info = asr.model.transcribe(samples, language=lang, word_timestamps=True, vad_filter=False,
                                                clip_timestamps=clips, condition_on_previous_text=False,
                                                beam_size=5)
            result = list(result)   # a generator: decoding happens here
        except Exception as e:
            raise ResyncError(ErrorClass.MODEL_ERROR, f"transcription failed ({type(e).__name__}: {e})") from e
        words = [Word(w.word.strip(), round(float(w.start), 3), round(float(w.end), 3), round(float(w.probability), 3))
                 for seg in result for w in (seg.words or []) if w.word.strip()]
        transcript = " ".join(seg.text.strip() for seg in result if seg.text.strip())
        return SpeechTiming(segments=segments, words=words, transcript=transcript, language=info.language)

    def _transcribe_aligned(self, samples: np.ndarray, segments: list[tuple[float, float]],
                            language: str | None) -> SpeechTiming:
        """whisperx's batched transcription, then forced alignment with the local wav2vec2 model."""
        import whisperx

        asr = self._load_asr()
        self._check_align_dir()
        try:
            result = asr.transcribe(samples, batch_size=self.batch_size, language=language)
        except Exception as e:
            raise ResyncError(ErrorClass.MODEL_ERROR, f"transcription failed ({type(e).__name__}: {e})") from e
        lang = result["language"]
        model, meta = self._load_align(lang)
        try:
            aligned = whisperx.align(result["segments"], model, meta, samples, "cpu")
        except Exception as e:
            raise ResyncError(ErrorClass.MODEL_ERROR, f"word alignment failed ({type(e).__name__}: {e})") from e
        words = [Word(w["word"].strip(), round(float(w["start"]), 3), round(float(w["end"]), 3),
                      float(w["score"]) if "score" in w else None)
                 for w in aligned["word_segments"] if "start" in w and "end" in w and w["word"].strip()]
        transcript = " ".join(s["text"].strip() for s in result["segments"] if s["text"].strip())
        return SpeechTiming(segments=segments, words=words, transcript=transcript, language=lang)


def _as_16k(audio: Audio) -> np.ndarray:
    """The models want 16 kHz float32 mono; ``load_audio`` already gives that, anything else is resampled."""
    x = np.asarray(audio.samples, dtype=np.float32).reshape(-1)
    if audio.sample_rate != SAMPLE_RATE:
        g = np.gcd(int(audio.sample_rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(audio.sample_rate) // g).astype(np.float32)
    return x


def _chunks(segments: list[tuple[float, float]], max_s: float) -> list[tuple[float, float]]:
    """Consecutive speech segments grouped into spans of at most ``max_s`` (a segment longer than that stays whole)."""
    out: list[tuple[float, float]] = []
    for start, end in segments:
        if out and end - out[-1][0] <= max_s:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _offline_sentence_splitter() -> None:
    """``whisperx.align`` loads NLTK's punkt_tab and downloads it when absent; never download.

    When the data is installed (``NLTK_DATA``) it is used; otherwise an untrained Punkt splitter,
    which splits on sentence punctuation. Sentences only group the aligned words, not their times."""
    from nltk.data import load as nltk_load
    from nltk.tokenize.punkt import PunktSentenceTokenizer
    from whisperx import alignment

    if getattr(alignment.nltk_load, "_resync_offline", False):
        return

    def load(resource: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return nltk_load(resource, *args, **kwargs)
        except LookupError:
            return PunktSentenceTokenizer()

    load._resync_offline = True  # type: ignore[attr-defined]
    alignment.nltk_load = load
