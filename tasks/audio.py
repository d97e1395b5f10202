"""Audio as the models want it: 16 kHz mono float32, from a video or any audio file.

Decoding goes through PyAV (FFmpeg), so any container, codec, sample rate and channel count works;
a video without an audio stream yields ``None`` rather than an error, because dubbing a silent
video is legitimate. Loudness is measured per ITU-R BS.1770 (K-weighted, gated), so QA can flag
translated tracks far louder or quieter than the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from scipy.signal import butter, lfilter, sosfiltfilt

from catalogs.errors import ErrorClass, ResyncError
from catalogs.probe import open_media
from catalogs.storage import Storage

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray   # float32, mono, in [-1, 1]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def load_audio(storage: Storage, uri: str, *, required: bool = True, sample_rate: int = SAMPLE_RATE) -> Audio | None:
    """Decode the first audio stream of ``uri`` to mono float32 at ``sample_rate``.

    ``required=False`` returns None for media without an audio stream (a video we still dub)."""
    with open_media(storage, uri, ErrorClass.AUDIO_DECODE_ERROR) as c:
        if not c.streams.audio:
            if required:
                raise ResyncError(ErrorClass.AUDIO_DECODE_ERROR, "no audio stream", item=uri)
            return None
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as e:
            raise ResyncError(ErrorClass.AUDIO_DECODE_ERROR, f"audio does not decode ({type(e).__name__}: {e})", item=uri) from e
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0 and required:
        raise ResyncError(ErrorClass.AUDIO_DECODE_ERROR, "audio stream holds no samples", item=uri)
    return Audio(np.clip(samples, -1.0, 1.0), sample_rate)


def _k_weighting(x: np.ndarray, sr: int) -> np.ndarray:
    """The two BS.1770 pre-filters (high shelf + high pass), bilinear-transformed for ``sr``."""
    # Stage 1: high shelf, f0 = 1681.97 Hz, gain 4 dB, Q = 0.7071.
    f0, g, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = np.tan(np.pi * f0 / sr)
    vh = 10 ** (g / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    b = [(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    y = lfilter(b, a, x)
    # Stage 2: high pass, f0 = 38.13 Hz, Q = 0.5003.
    f0, q = 38.13547087602444, 0.5003270373238773
    k = np.tan(np.pi * f0 / sr)
    a0 = 1 + k / q + k * k
    a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    return lfilter([1.0, -2.0, 1.0], a, y)


def loudness_lufs(audio: Audio) -> float:
    """Integrated loudness (LUFS, mono) per BS.1770-4: 400 ms blocks, 75% overlap, -70 LUFS and relative -10 LU gates.

    Returns -inf for digital silence or audio shorter than one block."""
    sr = audio.sample_rate
    y = _k_weighting(audio.samples.astype(np.float64), sr)
    block, hop = int(0.4 * sr), int(0.1 * sr)
    if len(y) < block:
        return float("-inf")
    starts = np.arange(0, len(y) - block + 1, hop)
    power = np.array([np.mean(y[s:s + block] ** 2) for s in starts])
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10 * np.log10(power)
    gated = power[lk > -70]
    if gated.size == 0:
        return float("-inf")
    rel = -0.691 + 10 * np.log10(gated.mean()) - 10
    final = power[(lk > -70) & (lk > rel)]
    return float(-0.691 + 10 * np.log10(final.mean()))


def envelope(audio: Audio, timestamps: np.ndarray) -> np.ndarray:
    """RMS energy per video frame, frame i covering [t_i, t_{i+1}) of its real timestamps (VFR-safe)."""
    x, sr = audio.samples, audio.sample_rate
    ts = np.asarray(timestamps, np.float64)
    last = ts[-1] + (np.median(np.diff(ts)) if len(ts) > 1 else 0.04)
    edges = np.round(np.append(ts, last) * sr).astype(int)
    out = np.zeros(len(ts), np.float32)
    for i in range(len(ts)):
        seg = x[max(edges[i], 0):min(edges[i + 1], len(x))]
        out[i] = float(np.sqrt(np.mean(seg ** 2))) if seg.size else 0.0
    return out


def speech_envelope(audio: Audio, timestamps: np.ndarray) -> np.ndarray:
    """Log energy of the speech band (300-3000 Hz) per video frame: what a talking mouth follows.
    Band-limiting drops rumble and hiss; the log makes quiet syllables count as much as loud ones."""
    sos = butter(4, [300, 3000], btype="band", fs=audio.sample_rate, output="sos")
    band = Audio(sosfiltfilt(sos, audio.samples.astype(np.float64)).astype(np.float32), audio.sample_rate)
    return np.log(envelope(band, timestamps) + 1e-4)


def speech_frames(audio: Audio, timestamps: np.ndarray, floor_db: float = 30.0) -> np.ndarray:
    """Frames with speech by the speech-band energy: within ``floor_db`` (amplitude) of the loud frames."""
    env = speech_envelope(audio, timestamps)          # natural log of the band's RMS
    return env > np.percentile(env, 95) - floor_db / 20 * np.log(10)


def pause_frames(speech: np.ndarray, min_pause: int = 10, settle: int = 3) -> np.ndarray:
    """(T,) bool: frames inside pauses of at least ``min_pause`` frames, without their first
    ``settle`` frames (the mouth closing after the last word)."""
    quiet = np.zeros(len(speech), bool)
    start = None
    for i, s in enumerate(np.append(speech, True)):
        if not s and start is None:
            start = i
        elif s and start is not None:
            if i - start >= min_pause:
                quiet[start + settle:i] = True
            start = None
    return quiet
