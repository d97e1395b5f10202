"""Quality metrics of one dub, computed while it is made (DESIGN sections 1 and 6).

The ``OutputObserver`` sees every chunk of source and composited frames as ``dub`` streams them to
the encoder, re-tracks the mouth on the output's aligned crop and keeps only small per-frame
measurements (never the frames). ``item_metrics`` turns those into the numbers a reviewer needs:
is the mouth in sync with the new speech (the sync expert's verdict on the output's own frames and
audio, ``tasks/sync.py``), did the renderer obey the planned mesh (``mesh_error_px``), is it still the
same person, is the mouth sharp, does it keep moving in silence, does the speech fit the shot.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from catalogs.settings import Settings
from models.sync_expert import SyncExpert
from tasks.audio import Audio, pause_frames, speech_envelope, speech_frames  # noqa: F401 (re-exported)
from tasks.facemesh import FaceMeshTracker
from tasks.frame_store import FrameStore, per_block
from tasks.geometry import warp_crop
from tasks.identity import FaceIdentity
from tasks.landmarks import LIPS, mouth_opening
from tasks.sync import SyncScore, judge_sync

QA_CROP = 256          # re-tracking and sharpness work on this aligned crop


def corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def laplacian_sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of a grey image: falls as an image blurs."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference length (case and punctuation ignored)."""
    ref, hyp = (re.findall(r"[\w']+", s.lower()) for s in (reference, hypothesis))
    if not ref:
        return float(len(hyp) > 0)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


@dataclass
class OutputObserver:
    """Per-frame measurements of a dub's output, gathered chunk by chunk during the dub."""

    mats: np.ndarray                  # (N, 2, 3) source frame -> QA crop
    usable: np.ndarray                # (N,) frames that were redrawn
    identity_every: int = 25          # frames between identity samples
    marks: FrameStore = field(init=False)   # (N, 478, 2) re-tracked landmarks, on disk (NaN: none)
    sharp_out: np.ndarray = field(init=False)
    sharp_src: np.ndarray = field(init=False)
    identity: list[float] = field(default_factory=list)
    seconds: float = 0.0              # time spent measuring

    def __post_init__(self) -> None:
        n = len(self.mats)
        self.marks = FrameStore(n, (478, 2), np.float32, fill=np.nan)
        self.sharp_out = np.full(n, np.nan)
        self.sharp_src = np.full(n, np.nan)
        self._tracker = FaceMeshTracker(max_faces=1, keep_history=False)   # each frame's marks are kept here
        self._faces = FaceIdentity()

    def __call__(self, indices: np.ndarray, source: np.ndarray, output: np.ndarray) -> None:
        t = time.perf_counter()
        self._observe(indices, source, output)
        self.seconds += time.perf_counter() - t

    def _observe(self, indices: np.ndarray, source: np.ndarray, output: np.ndarray) -> None:
        marks = np.full((len(indices), 478, 2), np.nan, np.float32)
        for k, i in enumerate(indices):
            if not self.usable[i]:
                continue
            out = warp_crop(output[k], self.mats[i], QA_CROP)
            faces = self._tracker.process(int(i), out)
            if not faces:
                continue
            pts = faces[0].points[:, :2]
            marks[k] = pts
            box = self.mouth_box(pts)
            src = warp_crop(source[k], self.mats[i], QA_CROP)
            self.sharp_out[i] = laplacian_sharpness(out[box])
            self.sharp_src[i] = laplacian_sharpness(src[box])
            if i % self.identity_every == 0:
                face = (*pts.min(0), *pts.max(0))
                self.identity.append(FaceIdentity.distance(self._faces.descriptor(src, face),
                                                           self._faces.descriptor(out, face)))
        self.marks[np.asarray(indices)] = marks

    @staticmethod
    def mouth_box(pts: np.ndarray, margin: float = 0.15) -> tuple[slice, slice]:
        """The box around the lips (landmarks ``pts`` in QA-crop pixels) where sharpness is measured."""
        lips = pts[LIPS]
        (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
        mx, my = (x1 - x0) * margin, (y1 - y0) * margin + 2
        clip = lambda v: int(np.clip(v, 0, QA_CROP))  # noqa: E731
        return slice(clip(y0 - my), clip(y1 + my) + 1), slice(clip(x0 - mx), clip(x1 + mx) + 1)

    def close(self) -> None:
        self._tracker.close()


def silence_motion(opening: np.ndarray, speech: np.ndarray, min_pause: int = 10, settle: int = 3) -> float:
    """Mouth motion in pauses relative to motion in speech (mean |frame-to-frame change|). Only
    pauses of at least ``min_pause`` frames count, without their first ``settle`` frames (the mouth
    closing after the last word); a dub whose mouth keeps chewing through pauses scores near 1."""
    quiet = pause_frames(speech, min_pause, settle)
    v = np.abs(np.diff(opening))
    still, talk = v[quiet[1:] & quiet[:-1]], v[speech[1:] & speech[:-1]]
    still, talk = still[np.isfinite(still)], talk[np.isfinite(talk)]
    if len(still) < 5 or len(talk) < 5 or talk.mean() < 1e-9:
        return float("nan")
    return float(still.mean() / talk.mean())


def least_in_sync(score: SyncScore, count: int = 4, apart: int = 12) -> list[int]:
    """The ``count`` frames where the expert finds the mouth least in sync, at least ``apart`` frames
    from each other (the report shows them)."""
    order = np.argsort(-np.nan_to_num(score.frame_distance, nan=-np.inf))
    chosen: list[int] = []
    for i in order[np.isfinite(score.frame_distance[order])]:
        if all(abs(int(i) - j) >= apart for j in chosen):
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return sorted(chosen)


def mouth_region(points: np.ndarray, frames: list[int], margin: float = 0.6) -> tuple[float, float, float, float] | None:
    """A square (x0, y0, x1, y1) around the mouth over ``frames`` of (T, 478, >=2) image landmarks."""
    lips = points[frames][:, LIPS, :2].reshape(-1, 2) if frames else np.zeros((0, 2))
    lips = lips[np.isfinite(lips).all(1)]
    if not len(lips):
        return None
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * (0.5 + margin)
    return float(cx - half), float(cy - half), float(cx + half), float(cy + half)


def sync_metrics(expert: SyncExpert, observer: OutputObserver, timestamps: np.ndarray, dubbed_audio: Audio,
                 source_points: np.ndarray) -> dict[str, float]:
    """The sync expert's judgement of the output (its re-tracked mouth against its own audio) and
    where to look: the least-in-sync frames and the mouth box around them in the source's pixels."""
    score = judge_sync(expert, observer.marks, timestamps, dubbed_audio.samples)
    out = {"av_offset_frames": score.offset_frames, "av_confidence": score.confidence, "av_distance": score.distance}
    worst = least_in_sync(score)
    box = mouth_region(source_points, worst)
    if box:
        out.update({f"av_worst_frame_{k}": float(i) for k, i in enumerate(worst)})
        out.update(dict(zip(("mouth_x0", "mouth_y0", "mouth_x1", "mouth_y1"), box)))
    return out


def item_metrics(settings: Settings, observer: OutputObserver, timestamps: np.ndarray, dubbed_audio: Audio,
                 sync: dict[str, float], source_audio: Audio | None, intended: np.ndarray | FrameStore, rendered: int, frames: int,
                 overhang_s: float, flags: dict[str, float] | None = None) -> dict[str, float]:
    """The QA metrics of one dub. ``sync``: the sync expert's (``sync_metrics``); ``intended``:
    (N, 478, 2) planned landmarks in the QA crop (for the renderer's obedience, ``mesh_error_px``).
    Landmarks are read a block of frames at a time: they may be on disk (``FrameStore``)."""
    opening = per_block(mouth_opening, observer.marks)
    fps = 1.0 / float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 25.0
    lips = per_block(lambda got, planned: np.linalg.norm(got[:, LIPS] - planned[:, LIPS], axis=-1).mean(-1),
                     observer.marks, intended)
    speech = speech_frames(dubbed_audio, timestamps)
    metrics = {
        "face_coverage": rendered / max(frames, 1),
        "retracked_share": float(np.isfinite(opening).sum() / max(rendered, 1)),
        **sync,
        "mesh_error_px": float(np.nanmean(lips)) if np.isfinite(lips).any() else float("nan"),
        "identity_distance": float(np.mean(observer.identity)) if observer.identity else float("nan"),
        "sharpness_ratio": float(np.nanmedian(observer.sharp_out / np.maximum(observer.sharp_src, 1e-6)))
        if np.isfinite(observer.sharp_out).any() else float("nan"),
        "silence_motion": silence_motion(opening, speech),
        "audio_overhang_s": overhang_s,
    }
    if source_audio is not None:
        source_speech = speech_frames(source_audio, timestamps)
        metrics["speech_outside_source_s"] = float((speech & ~source_speech).sum() / fps)
    metrics.update(flags or {})
    return metrics


def review_reasons(settings: Settings, qa: dict[str, float]) -> list[str]:
    """Why an item needs a person's eyes (empty: it does not), by the thresholds in settings."""
    checks = [
        ("face_coverage", lambda v: v < settings.qa_min_face_coverage, "little of the video has a usable face"),
        ("av_offset_frames", lambda v: abs(v) > settings.qa_max_av_offset_frames, "mouth out of sync with the speech"),
        ("av_confidence", lambda v: v < settings.qa_min_av_confidence, "mouth barely follows the speech"),
        ("av_distance", lambda v: v > settings.qa_max_av_distance, "mouth and speech far apart for the sync expert"),
        ("mesh_error_px", lambda v: v > settings.qa_max_mesh_error_px, "the mouth drawn is not the mouth planned"),
        ("identity_distance", lambda v: v > settings.qa_max_identity_distance, "the face no longer looks like the speaker"),
        ("sharpness_ratio", lambda v: v < settings.qa_min_sharpness_ratio, "blurry mouth"),
        ("silence_motion", lambda v: v > settings.qa_max_silence_motion, "mouth moves during silence"),
        ("audio_overhang_s", lambda v: v > settings.qa_max_overhang_s, "translated speech runs past the video"),
        ("speech_outside_source_s", lambda v: v > settings.qa_max_speech_outside_source_s,
         "long speech where the speaker is silent"),
        ("wer", lambda v: v > settings.qa_max_wer, "translated audio does not match its script"),
    ]
    return [f"{name}: {why}" for name, test, why in checks
            if name in qa and qa[name] is not None and np.isfinite(qa[name]) and test(qa[name])]


__all__ = ["OutputObserver", "corr", "item_metrics", "laplacian_sharpness", "least_in_sync", "mouth_region",
           "review_reasons", "silence_motion", "speech_frames", "sync_metrics", "word_error_rate", "QA_CROP"]
