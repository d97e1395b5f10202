"""Audio as the models want it: 16 kHz mono float32, from a video or any audio file.

Decoding goes through PyAV (FFmpeg), so any container, codec, sample rate and channel count works;
a video without an audio stream yields ``None`` rather than an error, because dubbing a silent
video is legitimate. Loudness is measured per ITU-R BS.1770 (K-weighted, gated), so QA can flag
translated tracks far louder or quieter than the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from scipy.signal import butter, lfilter, resample_poly, sosfilt, sosfilt_zi

from catalogs.errors import ErrorClass, ResyncError
from catalogs.probe import open_media
from catalogs.storage import Storage
from tasks.frame_store import FrameStore

SAMPLE_RATE = 16_000
BLOCK_SAMPLES = 1 << 20     # samples per block of the filters below: 8 MB of float64, ~65 s at 16 kHz


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
    samples = np.concatenate(chunks, dtype=np.float32) if chunks else np.zeros(0, np.float32)
    del chunks
    if samples.size == 0 and required:
        raise ResyncError(ErrorClass.AUDIO_DECODE_ERROR, "audio stream holds no samples", item=uri)
    return Audio(np.clip(samples, -1.0, 1.0, out=samples), sample_rate)


def speed_perturbed(samples: np.ndarray, factor: float) -> tuple[np.ndarray, float]:
    """The track played about ``factor`` times as fast (Kaldi's speed perturbation): pitch and every
    formant scale by the factor, as between a larger and a smaller vocal tract, and the duration by
    its inverse. Returns the samples and the exact factor (a ratio of small integers): time ``t`` of
    the track is time ``t / factor`` of the result."""
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor {factor} is outside 0.5-2")
    ratio = Fraction(1 / factor).limit_denominator(50)   # output samples per input sample
    out = resample_poly(np.asarray(samples, np.float32), ratio.numerator, ratio.denominator)
    return out.astype(np.float32), float(1 / ratio)


def _k_weighting_filters(sr: int) -> list[tuple[list[float], list[float]]]:
    """The two BS.1770 pre-filters (high shelf + high pass), bilinear-transformed for ``sr``: (b, a) each."""
    # Stage 1: high shelf, f0 = 1681.97 Hz, gain 4 dB, Q = 0.7071.
    f0, g, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = np.tan(np.pi * f0 / sr)
    vh = 10 ** (g / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = ([(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0],
             [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])
    # Stage 2: high pass, f0 = 38.13 Hz, Q = 0.5003.
    f0, q = 38.13547087602444, 0.5003270373238773
    k = np.tan(np.pi * f0 / sr)
    a0 = 1 + k / q + k * k
    return [shelf, ([1.0, -2.0, 1.0], [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])]


def _k_weighted(x: np.ndarray, sr: int, block: int = BLOCK_SAMPLES) -> FrameStore:
    """K-weighted ``x`` (float64, on disk), filtered a block at a time with the state carried: the
    same samples as filtering the whole signal at once."""
    filters = _k_weighting_filters(sr)
    state = [np.zeros(max(len(a), len(b)) - 1) for b, a in filters]
    out = FrameStore(len(x), (), np.float64)
    for lo in range(0, len(x), block):
        y = x[lo:lo + block].astype(np.float64)
        for k, (b, a) in enumerate(filters):
            y, state[k] = lfilter(b, a, y, zi=state[k])
        out.write(lo, y)
    return out


def loudness_lufs(audio: Audio) -> float:
    """Integrated loudness (LUFS, mono) per BS.1770-4: 400 ms blocks, 75% overlap, -70 LUFS and relative -10 LU gates.

    Returns -inf for digital silence or audio shorter than one block."""
    sr = audio.sample_rate
    y = _k_weighted(audio.samples, sr)
    block, hop = int(0.4 * sr), int(0.1 * sr)
    if len(y) < block:
        return float("-inf")
    starts = np.arange(0, len(y) - block + 1, hop)
    power = np.empty(len(starts))
    per_read = max(1, BLOCK_SAMPLES // hop)           # loudness blocks per read of the filtered signal
    for k in range(0, len(starts), per_read):
        first, last = int(starts[k]), int(starts[min(k + per_read, len(starts)) - 1]) + block
        span = y.read(first, last)
        power[k:k + per_read] = [np.mean(span[s - first:s - first + block] ** 2) for s in starts[k:k + per_read]]
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10 * np.log10(power)
    gated = power[lk > -70]
    if gated.size == 0:
        return float("-inf")
    rel = -0.691 + 10 * np.log10(gated.mean()) - 10
    final = power[(lk > -70) & (lk > rel)]
    return float(-0.691 + 10 * np.log10(final.mean()))


def envelope(audio: Audio, timestamps: np.ndarray, frames_per_read: int = 2048) -> np.ndarray:
    """RMS energy per video frame, frame i covering [t_i, t_{i+1}) of its real timestamps (VFR-safe).
    ``audio.samples`` may be a ``FrameStore``; it is read a run of frames at a time."""
    x, sr = audio.samples, audio.sample_rate
    ts = np.asarray(timestamps, np.float64)
    last = ts[-1] + (np.median(np.diff(ts)) if len(ts) > 1 else 0.04)
    edges = np.clip(np.round(np.append(ts, last) * sr).astype(int), 0, len(x))
    out = np.zeros(len(ts), np.float32)
    for f in range(0, len(ts), frames_per_read):
        g = min(f + frames_per_read, len(ts))
        first = int(edges[f:g + 1].min())
        span = np.asarray(x[first:int(edges[f:g + 1].max())])
        for i in range(f, g):
            seg = span[edges[i] - first:max(edges[i + 1], edges[i]) - first]
            out[i] = float(np.sqrt(np.mean(seg ** 2))) if seg.size else 0.0
    return out


def sosfiltfilt_blocks(sos: np.ndarray, x: np.ndarray, block: int = BLOCK_SAMPLES) -> FrameStore:
    """``scipy.signal.sosfiltfilt(sos, x)`` with its default odd padding, as float32 on disk: the
    forward pass runs a block at a time with the filter state carried and is kept on disk, then the
    backward pass reads it from the end. The same numbers as scipy's, without its several float64
    copies of the whole signal (about 8x an hour of audio)."""
    n_sections = len(sos)
    ntaps = 2 * n_sections + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    edge = 3 * ntaps
    if len(x) <= edge:
        raise ValueError(f"The length of the input vector x must be greater than padlen, which is {edge}.")
    x0, x1 = float(x[0]), float(x[-1])
    head = 2 * x0 - x[edge:0:-1].astype(np.float64)              # scipy's odd extension, each end
    tail = 2 * x1 - x[-2:-(edge + 2):-1].astype(np.float64)
    n_ext = len(x) + 2 * edge
    zi = sosfilt_zi(sos)

    def extended(lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) of the extended signal, float64."""
        parts = []
        if lo < edge:
            parts.append(head[lo:min(hi, edge)])
        if hi > edge and lo < edge + len(x):
            parts.append(x[max(lo - edge, 0):min(hi - edge, len(x))].astype(np.float64))
        if hi > edge + len(x):
            parts.append(tail[max(lo - edge - len(x), 0):hi - edge - len(x)])
        return np.concatenate(parts)

    forward = FrameStore(n_ext, (), np.float64)
    state = zi * float(head[0])
    for lo in range(0, n_ext, block):
        y, state = sosfilt(sos, extended(lo, min(lo + block, n_ext)), zi=state)
        forward.write(lo, y)
    out = FrameStore(len(x), (), np.float32)
    state = zi * float(forward.read(n_ext - 1, n_ext)[0])
    starts = range(0, n_ext, block)
    for lo in reversed(starts):
        hi = min(lo + block, n_ext)
        y, state = sosfilt(sos, forward.read(lo, hi)[::-1], zi=state)
        y = y[::-1]
        keep_lo, keep_hi = max(lo, edge), min(hi, edge + len(x))       # the extension is dropped
        if keep_lo < keep_hi:
            out.write(keep_lo - edge, y[keep_lo - lo:keep_hi - lo].astype(np.float32))
    forward.close()
    return out


def speech_envelope(audio: Audio, timestamps: np.ndarray) -> np.ndarray:
    """Log energy of the speech band (300-3000 Hz) per video frame: what a talking mouth follows.
    Band-limiting drops rumble and hiss; the log makes quiet syllables count as much as loud ones."""
    sos = butter(4, [300, 3000], btype="band", fs=audio.sample_rate, output="sos")
    band = sosfiltfilt_blocks(sos, audio.samples)
    try:
        return np.log(envelope(Audio(band, audio.sample_rate), timestamps) + 1e-4)
    finally:
        band.close()


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
