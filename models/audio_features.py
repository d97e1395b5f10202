"""Audio features for the Style-SyncFormer: a pretrained speech encoder, resampled to video frames.

With little footage per speaker the audio representation decides whether mouths generalise across
speakers (cross-speaker ridge regression to mouth opening read far more from Whisper encoder states
than from log-mel; measured before train/ existed, on shared clips that included videos/, and not
re-run since), so the default is the encoder of Whisper tiny.en (one block short of its output).

Every extractor maps float32 mono 16 kHz samples to (n_frames, dim) float32 at ``rate_hz``; frame
``i`` describes the audio around ``offset_s + i / rate_hz`` seconds. ``to_video_rate`` turns that
into one vector per (possibly irregularly timed) video frame, and ``FeatureCache`` stores the result
once per audio track, keyed on the samples and the extractor's ``name``.

Whisper notes, measured on the shared speech clips (on the encoder's final output):
- Its encoder sees fixed 30-s windows with absolute positional embeddings. A handful of the 384
  channels (about 8, e.g. 62, 136, 295, 334, 381) mostly encode the position inside the window
  (magnitude ~10 vs ~1 for content channels), so the same audio at another window position gives
  a raw vector with cosine ~0.5-0.6 to the first one; after removing the per-position mean the
  content agrees (cosine ~0.94, per-channel temporal correlation 0.95). A linear read-out learns to
  ignore those channels (subtracting a silent window's states moved a cross-language ridge probe of
  frame energy by < 0.01), so the raw states are returned; do not compare raw vectors by cosine.
- Frames in the first and last ~0.5 s of a window are the least reliable (no context on one side):
  long audio therefore runs in 30-s windows every 28 s and the 2-s overlaps are cross-faded, which
  gives those edge frames little weight and avoids a step at window joins. Outside the overlaps a
  frame equals that window computed on its own (tested), because Whisper's 80-dB range clamp is
  applied per window, as in its 30-s training clips, not over the whole track.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16_000
MODEL_DIR_SETTING = "audio feature model dir (settings.audio_feature_model_dir / RESYNC_AUDIO_FEATURE_MODEL_DIR)"


@runtime_checkable
class AudioFeatures(Protocol):
    """float32 mono 16 kHz samples -> (n_frames, dim) float32; frame i sits at offset_s + i / rate_hz."""

    name: str        # identifies model + settings: caches key on it
    dim: int
    rate_hz: float
    offset_s: float  # time of frame 0's centre (0 for Whisper and log-mel)

    def __call__(self, samples: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# helpers


def _as_samples(samples: np.ndarray) -> np.ndarray:
    """Validated contiguous float32 mono samples: a wrong shape should fail here, not deep in a model."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio features need mono samples of shape (n,), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("audio samples contain NaN or infinity")
    return x


def _fingerprint(paths: list[Path]) -> str:
    """Short sha256 of model files, memoised on (path, size, mtime): the name must change with weights."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        digest = _FINGERPRINTS.get(key)
        if digest is None:
            fh = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    fh.update(block)
            digest = _FINGERPRINTS[key] = fh.hexdigest()
        h.update(p.name.encode() + b"\0" + digest.encode())
    return h.hexdigest()[:12]


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def _window_starts(n_frames: int, length: int, hop: int) -> list[int]:
    """Window starts (in output frames) on a fixed grid, the last one padded rather than shifted,
    so a given second of a track always lands at the same window position."""
    if n_frames <= length:
        return [0]
    return [k * hop for k in range(1 + math.ceil((n_frames - length) / hop))]


def _crossfade(parts: Iterable[tuple[int, np.ndarray]], n_frames: int, overlap: int) -> np.ndarray:
    """Join window outputs (start frame, (len, d)), in order of start, into (n_frames, d), linearly
    cross-fading overlaps.

    Each window's weight ramps over ``overlap`` frames at an inner edge (not at the track's ends):
    in an overlap the two weights sum to 1, so there is no step where windows meet. Windows are
    taken as they come and the frames no later window reaches are finished at once: only a window
    and its overlap are summed in float64, never the whole track (an hour of it was 2 GB).
    """
    items = iter(parts)
    cur = next(items, None)
    if cur is None:
        raise AssertionError("window layout left frames uncovered")
    d = cur[1].shape[1]
    result = np.empty((n_frames, d), np.float32)
    ramp = (np.arange(overlap) + 1.0) / (overlap + 1.0)
    lo, acc, weight = 0, np.zeros((0, d), np.float64), np.zeros(0, np.float64)   # sums over frames [lo, lo + len(acc))
    k = 0
    while cur is not None:
        nxt = next(items, None)
        start, feats = cur
        feats = feats[: max(0, n_frames - start)]
        w = np.ones(len(feats))
        if k > 0:
            m = min(overlap, len(w))
            w[:m] *= ramp[:m]
        if nxt is not None:
            m = min(overlap, len(w))
            w[len(w) - m:] *= ramp[::-1][overlap - m:]
        end = max(lo + len(acc), start + len(feats))
        if end - lo > len(acc):
            acc = np.concatenate([acc, np.zeros((end - lo - len(acc), d), np.float64)])
            weight = np.concatenate([weight, np.zeros(end - lo - len(weight), np.float64)])
        acc[start - lo:start - lo + len(feats)] += w[:, None] * feats
        weight[start - lo:start - lo + len(feats)] += w
        done = min(nxt[0] if nxt is not None else n_frames, n_frames) - lo   # no later window reaches these
        if done > len(acc) or np.any(weight[:max(done, 0)] <= 0):
            raise AssertionError("window layout left frames uncovered")
        if done > 0:
            result[lo:lo + done] = (acc[:done] / weight[:done, None]).astype(np.float32)
            lo, acc, weight = lo + done, acc[done:], weight[done:]
        cur, k = nxt, k + 1
    if lo < n_frames:
        raise AssertionError("window layout left frames uncovered")
    return result


_N_FFT, _HOP, _N_MELS = 400, 160, 80       # Whisper's log-mel: 25-ms window, 100 frames/s
_WIN_MEL = 3000                            # the encoder's fixed 30-s input
_WIN_OUT = _WIN_MEL // 2                   # 1500 encoder frames at 50 Hz
_HOP_OUT = 1400                            # 28-s window hop -> 2-s (100-frame) overlaps
_MEL_BLOCK = 6000                          # STFT in 60-s blocks: bounded memory on hour-long tracks


def _whisper_mel_filters() -> np.ndarray:
    """Whisper's Slaney mel filterbank, taken from faster_whisper so it is the one the model expects."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor.get_mel_filters(SAMPLE_RATE, _N_FFT, n_mels=_N_MELS).astype(np.float32)


def whisper_log10_mel(samples: np.ndarray, n_frames: int, mel_filters: np.ndarray | None = None) -> np.ndarray:
    """(80, n_frames) log10 mel power exactly as Whisper computes it, before its range clamp.

    Same maths and dtypes as faster_whisper's FeatureExtractor (periodic Hann, centred reflect-padded
    STFT of 400 samples every 160, power, Slaney mel, log10 floored at 1e-10), run in blocks so an
    hour-long track needs little memory. Frames past the samples see digital silence, as with
    openai-whisper's ``log_mel_spectrogram(audio, padding=N_SAMPLES)``: padded frames sit at the floor.
    """
    filters = _whisper_mel_filters() if mel_filters is None else mel_filters
    x = _as_samples(samples)
    n = max(len(x), n_frames * _HOP)  # frame j is centred on sample j * 160; zeros past the samples
    half = _N_FFT // 2
    # the zero-padded samples, reflect-padded by half a window each side (np.pad's "reflect"), built
    # in one array: two np.pad copies of an hour of samples were 0.5 GB
    xp = np.zeros(n + 2 * half, np.float32)
    xp[half:half + len(x)] = x
    if n > half:
        xp[:half] = xp[2 * half:half:-1]
        xp[half + n:] = xp[half + n - 2:n - 2:-1]
    window = np.hanning(_N_FFT + 1)[:-1].astype(np.float32)
    log_spec = np.empty((_N_MELS, n_frames), np.float32)
    for j0 in range(0, n_frames, _MEL_BLOCK):
        j1 = min(n_frames, j0 + _MEL_BLOCK)
        seg = xp[j0 * _HOP: (j1 - 1) * _HOP + _N_FFT]
        frames = np.lib.stride_tricks.sliding_window_view(seg, _N_FFT)[::_HOP] * window
        spec = np.fft.rfft(frames, n=_N_FFT, axis=-1).astype(np.complex64)
        power = (np.abs(spec) ** 2).T                      # (201, frames)
        log_spec[:, j0:j1] = np.log10(np.clip(filters @ power, 1e-10, None))
    return log_spec


def whisper_normalise(log10_mel: np.ndarray) -> np.ndarray:
    """Whisper's scaling: clamp 80 dB below the loudest frame, then (x + 4) / 4."""
    return (np.maximum(log10_mel, log10_mel.max() - 8.0) + 4.0) / 4.0


def whisper_log_mel(samples: np.ndarray, n_frames: int, mel_filters: np.ndarray | None = None) -> np.ndarray:
    """(80, n_frames) Whisper input for one window: equals faster_whisper's
    ``FeatureExtractor()(samples, padding=...)[:, :n_frames]`` (tested bit-exact)."""
    return whisper_normalise(whisper_log10_mel(samples, n_frames, mel_filters))


class WhisperEncoderFeatures:
    """Whisper encoder states (384-d for tiny, 50 Hz) from a local CTranslate2 Whisper directory.

    The encoder runs in PyTorch (``models.whisper_encoder``) so that it can stop early:
    ``skip_blocks`` leaves out that many blocks at the end. The default, 1, reads the states one
    block before Whisper's output, which predict mouths better (leave-one-speaker-out ridge probes
    of mouth opening over train/'s speakers; see ``models.whisper_encoder``); 0 gives Whisper's own
    output (after its final layer norm), which is what CTranslate2's ``encode`` returns and keeps
    the name features had when CTranslate2 computed them, so models trained on those still find
    theirs. The model loads lazily, so a cache hit needs no model.
    """

    offset_s = 0.0

    def __init__(self, model_dir: str | os.PathLike[str], skip_blocks: int = 1, *,
                 device: str = "cpu", threads: int | None = None, batch_windows: int = 4) -> None:
        from models.whisper_encoder import count_blocks

        path = Path(model_dir).expanduser()
        missing = [f for f in ("model.bin", "config.json") if not (path / f).is_file()]
        if not path.is_dir() or missing:
            raise FileNotFoundError(
                f"{path} is not a CTranslate2 Whisper model directory "
                f"(missing {', '.join(missing) or 'the directory'}); set the {MODEL_DIR_SETTING}")
        n_blocks = count_blocks(path)
        if not 0 <= skip_blocks < n_blocks:
            raise ValueError(f"skip_blocks={skip_blocks}: the Whisper encoder in {path} has {n_blocks} blocks, "
                             f"so it can leave out 0 to {n_blocks - 1} of them")
        self.model_dir = path
        self.skip_blocks = int(skip_blocks)
        self.blocks = None if skip_blocks == 0 else n_blocks - skip_blocks
        self.device = device
        self.threads = threads          # None: torch's own setting (a Ray actor's share of the CPUs)
        self.batch_windows = max(1, batch_windows)
        self.dim = self._read_width(path)
        self.rate_hz = SAMPLE_RATE / (2 * _HOP)  # conv stride 2 over 100-Hz mel frames: 50 Hz
        fp = _fingerprint([path / "model.bin", path / "config.json"])
        # Window layout and depth are part of the name: changing them changes the features.
        depth = "float32" if skip_blocks == 0 else f"skip{skip_blocks}"
        self.name = f"whisper-enc-{fp}-{depth}-w30h28"
        self._model: Any = None
        self._filters: np.ndarray | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _read_width(path: Path) -> int:
        """Encoder width from config.json when it says; CTranslate2 Whisper configs do not, so tiny's 384
        (corrected from the first encoder output for wider models)."""
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            cfg = {}
        for key in ("d_model", "hidden_size"):
            if isinstance(cfg.get(key), int):
                return int(cfg[key])
        return 384  # CTranslate2 configs of Whisper carry no width; tiny / tiny.en

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from models.whisper_encoder import WhisperEncoder

                model = WhisperEncoder.from_ctranslate2(self.model_dir).to(self.device)
                if model.conv1.in_channels != _N_MELS:
                    raise ValueError(f"{self.model_dir}: Whisper models with {model.conv1.in_channels} mel bins "
                                     f"(large-v3) are not supported; use one with {_N_MELS}")
                self._filters = _whisper_mel_filters()
                self._model = model
            return self._model

    def _encode(self, mels: np.ndarray) -> np.ndarray:
        """(B, 80, 3000) -> (B, 1500, dim) encoder states after the configured number of blocks."""
        import torch

        model = self._load()
        prev = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = model(torch.from_numpy(np.ascontiguousarray(mels, np.float32)).to(self.device), self.blocks)
        finally:
            torch.set_num_threads(prev)
        feats = out.float().cpu().numpy()
        self.dim = int(feats.shape[-1])
        return feats

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        x = _as_samples(samples)
        n_out = math.ceil(len(x) / (2 * _HOP))  # 50 frames per second of audio
        if n_out == 0:
            return np.zeros((0, self.dim), np.float32)
        self._load()
        starts = _window_starts(n_out, _WIN_OUT, _HOP_OUT)
        mel = whisper_log10_mel(x, 2 * starts[-1] + _WIN_MEL, self._filters)

        def windows() -> Iterator[tuple[int, np.ndarray]]:
            for b in range(0, len(starts), self.batch_windows):
                batch = starts[b:b + self.batch_windows]
                # Range clamp per window, as in Whisper's 30-s training clips: a window's features then
                # depend on its own audio only (a loud event minutes away does not move its floor).
                enc = self._encode(np.stack([whisper_normalise(mel[:, 2 * s: 2 * s + _WIN_MEL]) for s in batch]))
                yield from zip(batch, enc)

        return _crossfade(windows(), n_out, _WIN_OUT - _HOP_OUT)


# ---------------------------------------------------------------------------------------------
# log-mel fallback


class LogMelFeatures:
    """Plain log-mel (Slaney, Whisper's scaling without the track-wide clamp): no model needed.

    The fallback when no encoder is available; it generalises worse across speakers. Every frame
    depends only on its own 25+ ms of audio, so the same audio gives the same features in any track.
    """

    offset_s = 0.0

    def __init__(self, n_mels: int = 80, rate_hz: float = 50.0) -> None:
        self.hop = int(round(SAMPLE_RATE / rate_hz))
        if self.hop < 1:
            raise ValueError(f"log-mel rate {rate_hz} Hz is above the sample rate")
        self.rate_hz = SAMPLE_RATE / self.hop                     # exact rate of the integer hop
        self.n_fft = max(_N_FFT, self.hop + self.hop % 2)  # 25 ms, or one hop at low rates: no gaps
        self.dim = int(n_mels)
        self.name = f"logmel-{self.dim}-{self.rate_hz:g}hz-nfft{self.n_fft}"
        self._fb: Any = None

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        import torch

        x = _as_samples(samples)
        n_out = math.ceil(len(x) / self.hop)
        if n_out == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._fb is None:
            import torchaudio.functional as AF

            self._fb = AF.melscale_fbanks(self.n_fft // 2 + 1, 0.0, SAMPLE_RATE / 2, self.dim, SAMPLE_RATE,
                                          norm="slaney", mel_scale="slaney")  # (freqs, mels)
        wav = torch.from_numpy(x)
        if len(x) <= self.n_fft // 2:  # reflect padding needs more samples than half a window
            wav = torch.nn.functional.pad(wav, (0, self.n_fft // 2 + 1 - len(x)))
        spec = torch.stft(wav, self.n_fft, self.hop, window=torch.hann_window(self.n_fft), center=True,
                          pad_mode="reflect", return_complex=True).abs().pow(2)  # (freqs, frames)
        mel = (spec.T @ self._fb).clamp_min(1e-10).log10()
        return ((mel[:n_out] + 4.0) / 4.0).numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------
# transformers speech encoders (wav2vec2, HuBERT, WavLM...)


class HFSpeechEncoderFeatures:
    """Last hidden state of a local transformers speech encoder (wav2vec2 / HuBERT / WavLM).

    Rate and timing come from the model's conv feature encoder (config.conv_stride/conv_kernel:
    320-sample stride = 50 Hz, first frame centred at half the receptive field, 12.5 ms for base
    models). Long audio runs in ``chunk_s`` chunks with cross-faded overlaps: attention memory grows
    with the square of the length. The feature extractor (e.g. per-utterance normalisation) is
    applied to the whole track once, so chunks do not change the normalisation.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None,
                 chunk_s: float = 20.0, overlap_s: float = 2.0) -> None:
        from transformers import AutoConfig

        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers model directory (no config.json); "
                                    f"set the {MODEL_DIR_SETTING}")
        if not (path / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"{path} has no preprocessor_config.json: the feature extractor "
                                    "(normalisation) must be saved with the model")
        self.model_dir, self.device, self.threads = path, device, threads
        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        strides, kernels = list(cfg.conv_stride), list(cfg.conv_kernel)
        self.stride = int(np.prod(strides))
        receptive = 1 + sum((k - 1) * int(np.prod(strides[:i])) for i, k in enumerate(kernels))
        self.receptive = receptive
        self.rate_hz = SAMPLE_RATE / self.stride
        self.offset_s = (receptive - 1) / 2 / SAMPLE_RATE
        self.dim = int(cfg.hidden_size)
        chunk = max(int(chunk_s * self.rate_hz), 2)
        self.overlap = min(max(int(overlap_s * self.rate_hz), 0), chunk // 2)
        self.chunk, self.hop = chunk, chunk - self.overlap
        weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".json")]
        self.name = f"hf-{cfg.model_type}-{_fingerprint(weights)}-c{chunk}o{self.overlap}"
        self._model: Any = None
        self._extractor: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._lock:
            if self._model is None:
                from transformers import AutoFeatureExtractor, AutoModel

                self._extractor = AutoFeatureExtractor.from_pretrained(str(self.model_dir), local_files_only=True)
                model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
                self._model = model.eval().to(self.device)

    def _n_frames(self, n_samples: int) -> int:
        """Frames the conv encoder yields for n samples (valid convolutions, no padding)."""
        return 0 if n_samples < self.receptive else (n_samples - self.receptive) // self.stride + 1

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        import torch

        x = _as_samples(samples)
        n_out = self._n_frames(len(x))
        if n_out == 0:
            return np.zeros((0, self.dim), np.float32)
        self._load()
        values = self._extractor(x, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0]
        values = np.ascontiguousarray(values, np.float32)
        parts: list[tuple[int, np.ndarray]] = []
        prev = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for s in _window_starts(n_out, self.chunk, self.hop):
                    # chunk frames s..s+chunk-1 need samples [s*stride, (s+chunk-1)*stride + receptive)
                    seg = values[s * self.stride: (s + self.chunk - 1) * self.stride + self.receptive]
                    wav = torch.from_numpy(seg)[None].to(self.device)
                    hidden = self._model(wav).last_hidden_state[0].float().cpu().numpy()
                    parts.append((s, hidden))
        finally:
            torch.set_num_threads(prev)
        return _crossfade(parts, n_out, self.overlap)


# ---------------------------------------------------------------------------------------------
# factory


def make_features(kind: str = "whisper", model_dir: str | os.PathLike[str] | None = None,
                  **kwargs: Any) -> AudioFeatures:
    """The extractor for a settings value: "whisper" (default), "logmel" or "hf"."""
    kind = kind.lower().strip()
    if kind in ("whisper", "hf"):
        if not model_dir:
            what = "a local CTranslate2 Whisper directory" if kind == "whisper" else \
                "a local wav2vec2/HuBERT transformers directory"
            raise ValueError(f"{kind!r} audio features need {what}: set the {MODEL_DIR_SETTING}, "
                             "or use the 'logmel' audio features")
        if not Path(model_dir).expanduser().is_dir():
            raise FileNotFoundError(f"audio feature model directory {model_dir} does not exist "
                                    f"(the {MODEL_DIR_SETTING})")
        cls = WhisperEncoderFeatures if kind == "whisper" else HFSpeechEncoderFeatures
        return cls(model_dir, **kwargs)
    if kind == "logmel":
        return LogMelFeatures(**kwargs)
    raise ValueError(f"unknown audio feature kind {kind!r}: expected 'whisper', 'logmel' or 'hf'")


# ---------------------------------------------------------------------------------------------
# video-rate resampling


def _sample(features: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of (n, d) features at fractional frame positions pos (any shape).

    Frame i stands for positions [i - 0.5, i + 0.5]: inside that span the edge frame is held, beyond
    it there is no audio and the result is zero.
    """
    n, d = features.shape
    out = np.zeros(pos.shape + (d,), np.float32)
    valid = (pos >= -0.5) & (pos <= n - 0.5)
    if n == 0 or not np.any(valid):
        return out
    p = np.clip(pos[valid], 0.0, n - 1.0)
    i0 = np.minimum(np.floor(p).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (p - i0)[:, None].astype(np.float64)
    f = features.astype(np.float64, copy=False)
    out[valid] = ((1.0 - w) * f[i0] + w * f[i1]).astype(np.float32)
    return out


def _positions(timestamps: np.ndarray, rate_hz: float, offset_s: float) -> np.ndarray:
    t = np.asarray(timestamps, np.float64)
    if t.ndim != 1 or not np.all(np.isfinite(t)):
        raise ValueError(f"video timestamps must be a finite 1-D array of seconds, got shape {t.shape}")
    return (t - offset_s) * rate_hz


def to_video_rate(features: np.ndarray, timestamps: np.ndarray, rate_hz: float,
                  offset_s: float = 0.0) -> np.ndarray:
    """(n, d) features at rate_hz -> (T, d): one audio token per video frame, at its real timestamp.

    (T, d) is what the SyncFormer's transformer encoder takes (audio_dim = d, one token per frame):
    attention already gives each token its temporal context, so stacking neighbours would only
    multiply the input width. Use ``stack_context`` where a model wants the local window explicitly.
    Variable frame rates are handled because every frame is sampled at its own timestamp.
    """
    f = np.asarray(features, np.float32)
    if f.ndim != 2:
        raise ValueError(f"features must be (n, d), got {f.shape}")
    return _sample(f, _positions(timestamps, rate_hz, offset_s))


def stack_context(features: np.ndarray, timestamps: np.ndarray, rate_hz: float, window: int = 2,
                  offset_s: float = 0.0) -> np.ndarray:
    """(n, d) -> (T, 2*window+1, d): per video frame, the features at its time + k / rate_hz for
    k = -window..window (linear interpolation, zeros beyond the audio). Row ``window`` equals
    ``to_video_rate``. At 25 fps from 50 Hz, window=1 keeps the feature frames between video frames."""
    if window < 0:
        raise ValueError("window must be >= 0")
    return _at_offsets(features, timestamps, rate_hz, offset_s, range(-window, window + 1))


def frame_tokens(features: np.ndarray, timestamps: np.ndarray, rate_hz: float, offset_s: float = 0.0,
                 offsets: tuple[int, ...] = (0,)) -> np.ndarray:
    """(n, d) -> (T, len(offsets) * d): the SyncFormer's audio token per video frame, the feature
    frames at its time + k / rate_hz for every k in ``offsets`` (config ``audio_offsets``), side by side.
    ``offsets=(0,)`` is ``to_video_rate``. A window leaning ahead lets a small model see the sound a
    mouth shape is getting ready for, which attention alone learns poorly from little data."""
    if not offsets:
        raise ValueError("offsets must name at least one feature frame")
    ctx = _at_offsets(features, timestamps, rate_hz, offset_s, offsets)
    return ctx.reshape(len(ctx), -1)


def _at_offsets(features: np.ndarray, timestamps: np.ndarray, rate_hz: float, offset_s: float, offsets) -> np.ndarray:
    f = np.asarray(features, np.float32)
    if f.ndim != 2:
        raise ValueError(f"features must be (n, d), got {f.shape}")
    pos = _positions(timestamps, rate_hz, offset_s)[:, None] + np.asarray(list(offsets), np.float64)[None, :]
    return _sample(f, pos)


# ---------------------------------------------------------------------------------------------
# cache


class FeatureCache:
    """Features computed once per (audio track, extractor) and kept as plain ``.npy`` files.

    Key: sha256 over the extractor name and the float32 sample bytes, so a new model, compute type
    or window layout never reads stale features. Files are written to a temporary name and renamed
    (atomic on one filesystem), so concurrent workers and crashes never leave half-written files,
    and they load with ``allow_pickle=False``.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(samples: np.ndarray, name: str) -> str:
        x = np.ascontiguousarray(samples, dtype=np.float32)
        h = hashlib.sha256(name.encode("utf-8") + b"\0")
        h.update(memoryview(x).cast("B"))
        return h.hexdigest()

    def path(self, samples: np.ndarray, name: str) -> Path:
        """One sub-folder per extractor (readable, easy to prune); the key itself includes the name."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "features"
        return self.folder / slug / f"{self.key(samples, name)}.npy"

    @staticmethod
    def _read(target: Path) -> np.ndarray | None:
        """The cached features, or None when absent or unreadable (then they are recomputed and rewritten)."""
        if not target.is_file():
            return None
        try:
            cached = np.load(target, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return cached if cached.ndim == 2 and cached.dtype == np.float32 else None

    def get_or_compute(self, samples: np.ndarray, extractor: AudioFeatures) -> np.ndarray:
        target = self.path(samples, extractor.name)
        cached = self._read(target)
        if cached is not None:
            return cached
        feats = np.ascontiguousarray(extractor(samples), dtype=np.float32)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, feats, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return feats
