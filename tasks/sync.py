"""Audio-visual sync of any video, judged by the sync expert (``models.sync_expert``).

This is what QA puts in every manifest row (``av_offset_frames``, ``av_confidence``,
``av_distance``) and what ``resync sync`` prints: the expert reads the mouth landmarks tracked on
the frames being judged and the audio being played with them, nothing the dub planned.

The mouth: nine distances between lip, nose and chin landmarks (``SHAPE_PAIRS``) over the eye
distance, minus the clip's median, so that who speaks and how the head sits drop out and what is
left is how the mouth moves. The audio: 200 ms of audio
features centred on each video frame (40-bin log-mel at 100 Hz, or the frozen Whisper tiny.en
encoder), the clip's mean per feature removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from models.audio_features import AudioFeatures, LogMelFeatures, make_features, stack_context
from models.checkpoint import load_checkpoint
from models.sync_expert import (ExpertSyncLoss, SyncExpert, SyncExpertConfig, eye_distance, offset_distances,
                                shape_measures)
from tasks.frame_store import BLOCK_ROWS, FrameStore
from tasks.landmarks import CHIN, LEFT_EYE, RIGHT_EYE

# Mouth shape measures, each a distance between two landmarks: inner and outer lip gaps, inner and
# outer mouth widths, nose to upper lip, nose to lower lip, nose to chin, and the lip thicknesses.
SHAPE_PAIRS = np.array([(13, 14), (0, 17), (78, 308), (61, 291), (1, 0), (1, 17), (1, CHIN), (0, 13), (14, 17)],
                       dtype=np.int64)
MOUTH_SCALE = 10.0             # in eye distances x 10: values of order one
_PAIRS, _LEFT_EYE, _RIGHT_EYE = (torch.from_numpy(x) for x in (SHAPE_PAIRS, LEFT_EYE, RIGHT_EYE))
EMBED_CHUNK = 2048             # frames embedded at a time
BUNDLED_EXPERT = Path(__file__).resolve().parent.parent / "models" / "weights" / "sync-expert"


def mouth_features(points: np.ndarray | FrameStore) -> tuple[np.ndarray, np.ndarray]:
    """(T, 478, >=2) landmarks in any image frame -> ((T, 9) mouth shape measures, (T,) finite frames).

    Distances between landmarks over the eye distance, minus the clip's median: what is left is how
    the mouth moves, not whose mouth it is or how the head sits. The landmarks are read a block of
    frames at a time (they may be on disk): only the nine measures are held for the whole clip."""
    rel = np.full((len(points), len(SHAPE_PAIRS)), np.nan)
    ok = np.zeros(len(points), bool)
    for a in range(0, len(points), BLOCK_ROWS):
        p = torch.from_numpy(np.asarray(points[a:a + BLOCK_ROWS], np.float64)[..., :2])
        scale = eye_distance(p, _LEFT_EYE, _RIGHT_EYE).numpy()
        d = shape_measures(p, _PAIRS, _LEFT_EYE, _RIGHT_EYE).numpy()
        good = np.isfinite(d).all(1) & np.isfinite(scale) & (scale > 1e-6)
        rel[a:a + len(p)][good] = d[good]
        ok[a:a + len(p)] = good
    feats = np.zeros((len(points), len(SHAPE_PAIRS)), np.float32)
    if ok.any():
        feats[ok] = (rel[ok] - np.median(rel[ok], axis=0)) * MOUTH_SCALE
    return feats, ok


def mouth_windows(feats: np.ndarray, ok: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, window, D) windows centred on every frame and (T,) whether all their frames are finite."""
    half = window // 2
    idx = np.clip(np.arange(len(feats))[:, None] + np.arange(-half, window - half)[None], 0, len(feats) - 1)
    inside = (np.arange(len(feats)) >= half) & (np.arange(len(feats)) < len(feats) - (window - half - 1))
    return feats[idx], ok[idx].all(1) & inside


@lru_cache(maxsize=4)
def expert_audio_features(config: SyncExpertConfig) -> AudioFeatures:
    """The audio features the expert reads, fixed by its config (never by settings: an expert reads
    what it was trained on): 40-bin log-mel at 100 Hz, or the bundled Whisper tiny.en encoder. Made
    once per configuration and process."""
    if config.audio_features == "whisper":
        from tasks.model_store import bundled_whisper_dir

        return make_features("whisper", bundled_whisper_dir(), skip_blocks=1)
    return LogMelFeatures(config.audio_dim, 100.0)


def audio_track(samples: np.ndarray, features: AudioFeatures) -> np.ndarray:
    """(n, audio_dim) the expert's features of a whole track (16 kHz samples), the track's mean removed."""
    feats = features(samples)
    return feats - feats.mean(0, keepdims=True) if len(feats) else feats


def audio_windows(samples: np.ndarray, timestamps: np.ndarray, config: SyncExpertConfig,
                  features: AudioFeatures | None = None) -> np.ndarray:
    """(T, audio_frames, audio_dim) audio feature windows centred on every frame's time (16 kHz samples)."""
    features = features or expert_audio_features(config)
    return stack_context(audio_track(samples, features), timestamps, features.rate_hz, config.audio_frames // 2,
                         features.offset_s)


@dataclass(frozen=True)
class SyncScore:
    """SyncNet's three numbers for one video, and the per-frame distance at the best offset."""
    offset_frames: float       # positive: the mouth comes after the sound
    confidence: float          # median minus minimum of the mean distance over offsets (LSE-C)
    distance: float            # mean distance at the best offset (LSE-D)
    frame_distance: np.ndarray  # (T,) distance of each mouth window at the best offset, NaN where none

    def as_dict(self) -> dict[str, float]:
        return {"offset_frames": self.offset_frames, "confidence": self.confidence, "distance": self.distance}


NO_SCORE = SyncScore(float("nan"), float("nan"), float("nan"), np.zeros(0))


def load_sync_expert(folder: str | Path | None = None) -> tuple[SyncExpert, str]:
    """The expert in ``folder`` (default: the bundled one) and its version."""
    tensors, doc, version = load_checkpoint(folder or BUNDLED_EXPERT)
    model = SyncExpert(SyncExpertConfig.from_dict(doc["config"]))
    model.load_state_dict(tensors)
    return model.eval(), version


def expert_sync_loss(folder: str | Path | None = None) -> ExpertSyncLoss:
    """The expert in ``folder`` (default: the bundled one), frozen, as a training loss on drawn meshes."""
    expert, _ = load_sync_expert(folder)
    return ExpertSyncLoss(expert, _PAIRS, _LEFT_EYE, _RIGHT_EYE, MOUTH_SCALE)


@torch.no_grad()
def audio_embedding(expert: SyncExpert, samples: np.ndarray, timestamps: np.ndarray,
                    track: np.ndarray | None = None) -> torch.Tensor:
    """(T, D) the expert's embedding of the audio around every frame time (16 kHz ``samples``), a
    chunk of frames at a time (memory does not grow with length). ``track``: the expert's features
    of ``samples`` when already computed (the Style-SyncFormer's Whisper frames are the same)."""
    features = expert_audio_features(expert.config)
    feats = audio_track(samples, features) if track is None else track - track.mean(0, keepdims=True)
    out = [expert.audio(torch.from_numpy(stack_context(feats, timestamps[lo:lo + EMBED_CHUNK], features.rate_hz,
                                                       expert.config.audio_frames // 2, features.offset_s)))
           for lo in range(0, len(timestamps), EMBED_CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, expert.config.embed_dim)


@torch.no_grad()
def embed(expert: SyncExpert, points: np.ndarray, timestamps: np.ndarray,
          samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mouth (T, D), audio (T, D), valid (T,)) embeddings of every frame's windows."""
    feats, ok = mouth_features(points)
    windows, valid = mouth_windows(feats, ok, expert.config.window)
    mouth = torch.cat([expert.mouth(torch.from_numpy(windows[lo:lo + EMBED_CHUNK]))
                       for lo in range(0, len(windows), EMBED_CHUNK)])
    return mouth, audio_embedding(expert, samples, timestamps), torch.from_numpy(valid)


def judge_sync(expert: SyncExpert, points: np.ndarray, timestamps: np.ndarray, samples: np.ndarray,
               min_windows: int = 10) -> SyncScore:
    """SyncNet-style offset, confidence and distance of a mouth (landmarks per frame, NaN where no
    face) against 16 kHz audio. NaN scores when fewer than ``min_windows`` mouth windows exist."""
    if len(points) < expert.config.window:
        return NO_SCORE
    mouth, audio, valid = embed(expert, points, timestamps, samples)
    if int(valid.sum()) < min_windows:
        return SyncScore(float("nan"), float("nan"), float("nan"), np.full(len(points), np.nan))
    offsets, dist = offset_distances(mouth, audio, valid, expert.config.max_offset)
    finite = torch.isfinite(dist)
    best = int(torch.argmin(torch.where(finite, dist, torch.inf)))
    k = int(offsets[best])
    per_frame = np.full(len(points), np.nan, np.float32)
    t = np.arange(max(k, 0), len(points) + min(k, 0))
    t = t[valid.numpy()[t]]
    per_frame[t] = (mouth[t] - audio[t - k]).norm(dim=-1).numpy()
    d = dist[finite]
    return SyncScore(float(k), float(d.median() - d.min()), float(d.min()), per_frame)


def shift_audio(samples: np.ndarray, frames: int, fps: float, sample_rate: int = 16_000) -> np.ndarray:
    """The audio moved ``frames`` video frames later (negative: earlier)."""
    n = int(round(abs(frames) / fps * sample_rate))
    return np.concatenate([np.zeros(n, np.float32), samples]) if frames > 0 else samples[n:]


def calibration(expert: SyncExpert, points: np.ndarray, timestamps: np.ndarray, fps: float, samples: np.ndarray,
                other_samples: np.ndarray, shift: int = 10) -> dict[str, SyncScore]:
    """The expert on one real clip: with its own audio, that audio ``shift`` frames late and early,
    another clip's audio, and the clip's mouth frozen on its middle frame (``samples`` at 16 kHz,
    fitted to the video by the caller)."""
    n = len(samples)
    fit = lambda a: np.pad(a[:n], (0, max(0, n - len(a))))  # noqa: E731
    frozen = np.repeat(points[len(points) // 2][None], len(points), 0)
    return {"own": judge_sync(expert, points, timestamps, samples),
            "late": judge_sync(expert, points, timestamps, fit(shift_audio(samples, shift, fps))),
            "early": judge_sync(expert, points, timestamps, fit(shift_audio(samples, -shift, fps))),
            "other": judge_sync(expert, points, timestamps, fit(other_samples)),
            "frozen": judge_sync(expert, frozen, timestamps, samples)}


__all__ = ["calibration", "shift_audio", "BUNDLED_EXPERT", "SHAPE_PAIRS", "NO_SCORE", "SyncScore", "audio_windows", "embed", "expert_audio_features", "judge_sync",
           "load_sync_expert", "mouth_features", "mouth_windows"]
