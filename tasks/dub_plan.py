"""The plan of a dub, before any pixel is drawn: the new speech and the mouth motion for it.

Stage 3 of the dub pipeline (decode -> track -> **plan** -> redraw -> composite -> encode/mux): the
audio fitted to the video's duration, audio features of the new speech at the video's frame times,
Style-SyncFormer displacements in the speaker's own style (eased to rest in long pauses), and, per
frame, the canonical mesh to draw (below the nose the predicted motion, above it the tracked one).
Everything here is per-frame geometry, a few kilobytes a frame: the frames themselves are never
needed. Meshes are posed into crop pixels per chunk by the redraw stage (``DubPlan.crop_vertices``).

``bench/quality`` and QA call these same functions; ``tasks.lipsync.dub`` runs them in this order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from models.audio_features import AudioFeatures, FeatureCache, frame_tokens
from models.resyncer import ReSyncer
from tasks.audio import SAMPLE_RATE, Audio, load_audio, pause_frames, speech_frames
from tasks.detail import detail_factor
from tasks.frame_store import FrameStore
from tasks.landmarks import LEFT_EYE, MOUTH_CORNERS, NOSE_TIP, RIGHT_EYE, mouth_opening
from tasks.track import TrackResult
from tasks.training_data import crop_matrices, project_to_crop


def lower_face_weights(template: np.ndarray, softness: float = 0.08) -> np.ndarray:
    """(V,) weight of predicted motion per vertex: 1 below the nose tip, 0 above, a soft band between.

    Measured along the eyes -> mouth axis of the template, so it does not depend on how the
    canonical frame is oriented. ``softness`` is in eye distances (the template's unit).
    """
    eyes = (template[LEFT_EYE].mean(0) + template[RIGHT_EYE].mean(0)) / 2
    down = template[MOUTH_CORNERS].mean(0) - eyes
    down = down / max(float(np.linalg.norm(down)), 1e-9)
    u = (template - template[NOSE_TIP]) @ down
    return np.clip(0.5 + u / (2 * softness), 0.0, 1.0).astype(np.float32)


def renderable(track: TrackResult) -> np.ndarray:
    """Frames we redraw: a face that is neither too small nor turned too far to look right."""
    return track.valid & ~track.flags["small_face"] & ~track.flags["extreme_pose"]


def usable_frames(track: TrackResult, video_uri: str) -> np.ndarray:
    """``renderable(track)``, or ``no_face`` when no frame is."""
    usable = renderable(track)
    if not usable.any():
        raise ResyncError(ErrorClass.NO_FACE, "no frame has a usable face (none, too small or turned away)",
                          item=video_uri)
    return usable


def reference_window(displacements: np.ndarray, usable: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` consecutive usable frames with the most mouth motion: the speaker's style
    (at training any window of the clip was a reference; the liveliest one says most)."""
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        raise ResyncError(ErrorClass.NO_FACE, "no usable face frame to take a speaking style from")
    if len(idx) <= length:
        return displacements[idx]
    # motion between consecutive usable frames, a block at a time (no copy of the whole video's motion)
    block = 1024
    energy = np.concatenate([np.nan_to_num(np.linalg.norm(np.diff(displacements[idx[a:a + block + 1]], axis=0),
                                                          axis=-1).mean(-1))
                             for a in range(0, len(idx) - 1, block)])
    cum = np.concatenate([[0.0], np.cumsum(energy)])
    best = int(np.argmax(cum[length - 1:] - cum[: len(cum) - length + 1]))
    return displacements[idx[best: best + length]]


def reference_frame(track: TrackResult, usable: np.ndarray, opening_quantile: float = 0.5) -> int:
    """The frame whose crop stands for the person: frontal and with a median mouth opening (an open
    mouth's frame was measured too: the reference enters the generator as style codes, not pixels,
    and brought no teeth on the held-out speakers: README, quality). ``opening_quantile`` 0.1: a
    mouth as closed as the speaker's at rest (``rest_pose``'s share), the still pauses' frame."""
    return frontal_frame(track.mouth_openings(), track.euler[:, 0], usable, opening_quantile)


def frontal_frame(openings: np.ndarray, yaw: np.ndarray, usable: np.ndarray, opening_quantile: float) -> int:
    """The usable frame nearest frontal whose mouth opening is nearest the ``opening_quantile`` of
    the usable frames' openings (frames without one are never chosen unless none has one)."""
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        raise ResyncError(ErrorClass.NO_FACE, "no usable face frame for a reference crop")
    opening = np.nan_to_num(openings[idx], nan=np.inf)
    finite = np.isfinite(opening)
    if not finite.any():
        return int(idx[0])
    target = np.quantile(opening[finite], opening_quantile)
    score = np.abs(opening - target) / (opening[finite].std() + 1e-6) + np.abs(np.nan_to_num(yaw[idx])) / 15.0
    return int(idx[int(np.argmin(score))])


def fit_audio_length(samples: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Pad with silence or cut, to exactly ``seconds``: the video's duration decides the output's."""
    n = int(round(seconds * sample_rate))
    return samples[:n] if len(samples) >= n else np.pad(samples, (0, n - len(samples)))


def video_duration(track: TrackResult) -> float:
    ts = track.timestamps
    step = np.median(np.diff(ts)) if len(ts) > 1 else 1.0 / max(track.fps, 1e-6)
    return float(ts[-1] + step) if len(ts) else 0.0


def planned_meshes(track: TrackResult, predicted: np.ndarray, identity: np.ndarray | None = None,
                   indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(new, old) canonical meshes per frame: below the nose the predicted motion, above it the
    tracked one (the upper face is kept, so its mesh must match the video). With ``identity`` (a
    face swap) the same motion moves that person's template instead of this speaker's. With
    ``indices`` only those frames (``predicted`` is still the whole video's): the dub builds them a
    chunk at a time, so no whole-video mesh is ever held beside the track."""
    idx = np.arange(track.n_frames) if indices is None else np.asarray(indices)
    return composed_meshes(track, idx, predicted[idx], identity)


def composed_meshes(track: TrackResult, idx: np.ndarray, motion: np.ndarray,
                    identity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(new, old) canonical meshes of frames ``idx``: ``motion`` (one row per frame, or one row for
    all) below the nose, the tracked motion above it (``planned_meshes``)."""
    weights = lower_face_weights(track.template)[None, :, None]
    tracked = np.nan_to_num(track.displacements[idx])
    templates = track.templates[track.shot_index[idx]]
    shape = templates if identity is None else np.broadcast_to(identity[None], templates.shape)
    new = shape + tracked * (1 - weights) + np.nan_to_num(motion) * weights
    return new.astype(np.float32), (templates + tracked).astype(np.float32)


def crop_vertices(track: TrackResult, canonical: np.ndarray, usable: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """(T, V, 3) canonical meshes posed with each frame's head pose, in the pixels of its aligned crop
    (NaN where a frame is not usable)."""
    idx = np.flatnonzero(usable)
    out = np.full(canonical.shape, np.nan, np.float32)
    out[idx] = project_to_crop(canonical[idx].astype(np.float64), track.scale[idx].astype(np.float64),
                               track.rotation[idx].astype(np.float64), track.translation[idx].astype(np.float64),
                               mats[idx])
    return out


def rest_pose(track: TrackResult, usable: np.ndarray, share: float = 0.1) -> np.ndarray:
    """(V, 3) the speaker's own mouth at rest: the mean displacement of their usable frames with the
    least open mouth (the lowest ``share``). Zero displacement is the average face, half open."""
    idx = np.flatnonzero(usable)
    opening = np.nan_to_num(track.mouth_openings()[idx], nan=np.inf)
    keep = idx[opening <= np.quantile(opening[np.isfinite(opening)], share)] if np.isfinite(opening).any() else idx
    return np.nan_to_num(track.displacements[keep]).mean(0).astype(np.float32)


def articulate(predicted: np.ndarray, rest: np.ndarray, gain: float) -> np.ndarray:
    """Predicted motion moved ``gain`` times as far from the speaker's mouth at rest: an L2-trained
    predictor averages over the mouths a sound allows and under-articulates, and scaling about the
    closed mouth opens the mouth wider without pushing a closed one through itself."""
    out = np.subtract(predicted, rest[None], dtype=np.float32)   # in place from here: one array of the video's length
    out *= gain
    out += rest[None]
    return out


def pause_gate(speech: np.ndarray, min_pause: int, ramp: int = 3) -> np.ndarray:
    """(T,) how far each frame eases to rest: 1 inside the pauses of the new speech (``min_pause``
    frames or longer), ramping over ``ramp`` frames each side, 0 wherever there is speech."""
    quiet = pause_frames(speech, min_pause, settle=ramp).astype(np.float32)
    if not quiet.any():
        return np.zeros(len(speech), np.float32)
    return np.convolve(quiet, np.ones(2 * ramp + 1, np.float32) / (2 * ramp + 1), "same") * ~speech.astype(bool)


def ease_to_rest(motion: np.ndarray, gate: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """``motion`` (float32, a block of frames) eased in place to ``rest`` by ``gate`` (those frames'
    part of ``pause_gate``): only the pauses' rows are touched."""
    rows = np.flatnonzero(gate)
    g = gate[rows, None, None]
    motion[rows] = motion[rows] * (1 - g) + rest[None] * g
    return motion


def rest_in_pauses(predicted: np.ndarray, speech: np.ndarray, rest: np.ndarray, min_pause: int,
                   ramp: int = 3) -> np.ndarray:
    """Predicted motion eased to ``rest`` in the pauses of the new speech (``min_pause`` frames or
    longer), over ``ramp`` frames each side. The Style-SyncFormer never saw digital silence or long
    pauses of a translated track, and left alone its mouth hangs half open and keeps moving there."""
    gate = pause_gate(speech, min_pause, ramp)
    return ease_to_rest(predicted.astype(np.float32), gate, rest) if gate.any() else predicted


def motion_blocks(model: ReSyncer, features: AudioFeatures, cache: FeatureCache | None, samples: np.ndarray,
                  track: TrackResult, style_displacements: np.ndarray,
                  readout_weight: float = 0.0) -> Iterator[tuple[int, np.ndarray]]:
    """(first frame, displacements) for the new speech at the video's frame times, in the given
    style, in frame order a Style-SyncFormer window at a time. With ``readout_weight`` and a model
    that carries a motion read-out, that share of the motion is the read-out's (in the speaker's
    units from the same reference motion)."""
    feats = cache.get_or_compute(samples, features) if cache else features(samples)
    offsets, ts = model.config.syncformer.audio_offsets, track.timestamps

    def tokens(s: int, e: int) -> torch.Tensor:     # per window: a long video never holds them all
        return torch.from_numpy(frame_tokens(feats, ts[s:e], features.rate_hz, features.offset_s, offsets))

    reference = torch.from_numpy(np.nan_to_num(style_displacements).astype(np.float32))
    style = model.style_code(reference)
    blend = readout_weight if model.readout is not None else 0.0
    reference = reference[: model.config.syncformer.style_window]
    for s, block in model.displacement_blocks(tokens, len(ts), style):
        if blend > 0:
            with torch.no_grad():
                block = (1 - blend) * block + blend * model.readout(tokens(s, s + len(block)), reference)
        yield s, block.numpy()


def predict_displacements(model: ReSyncer, features: AudioFeatures, cache: FeatureCache | None, samples: np.ndarray,
                          track: TrackResult, style_displacements: np.ndarray, readout_weight: float = 0.0) -> np.ndarray:
    """(T, V, 3) displacements for the new speech at the video's frame times, in the given style."""
    return np.concatenate([b for _, b in motion_blocks(model, features, cache, samples, track, style_displacements,
                                                       readout_weight)])


@dataclass
class DubAudio:
    """The new speech as the output carries it."""
    samples: np.ndarray         # 16 kHz mono, padded with silence or cut to the video's duration
    seconds: float              # the track's own length (0 without audio)
    overhang_s: float           # speech cut off at the end of the video


def dub_audio(storage: Storage, settings: Settings, audio_uri: str | None, duration: float) -> DubAudio:
    """Load and fit the new speech; a track longer than ``settings.max_audio_seconds`` is refused."""
    if not audio_uri:
        return DubAudio(np.zeros(int(round(duration * SAMPLE_RATE)), np.float32), 0.0, 0.0)
    audio = load_audio(storage, audio_uri)
    if audio.duration_s > settings.max_audio_seconds:
        raise ResyncError(ErrorClass.AUDIO_TOO_LONG, f"{audio.duration_s:.0f} s of audio, the limit is "
                          f"{settings.max_audio_seconds:.0f} s", item=audio_uri)
    return DubAudio(fit_audio_length(audio.samples, duration), audio.duration_s, max(0.0, audio.duration_s - duration))


@dataclass
class DubPlan:
    """Per frame, what to draw: the motion below the nose and where the generator's crop sits.

    The meshes themselves (``meshes``) are built from the track a chunk at a time, and the motion
    waits on disk (``FrameStore``) until a chunk asks for its rows: what the plan holds in memory is
    a few scalars a frame."""
    usable: np.ndarray          # (T,) frames to redraw
    motion: np.ndarray | FrameStore  # (T, V, 3) displacements to show below the nose (predicted, on disk; or driven)
    identity: np.ndarray | None  # (V, 3) another face's template (a face swap), else None
    mats: np.ndarray            # (T, 2, 3) frame -> generator crop
    whole_face: bool            # a face swap: the whole face is redrawn, not only the mouth
    detail_factor: int          # frame texture carried this many times finer than the crop; 0: off
    rest: np.ndarray | None = None         # (V, 3) the speaker's mouth at rest (audio-driven dubs)
    rest_weight: np.ndarray | None = None  # (T,) how far each frame rests (``pause_gate``); None: never

    def meshes(self, track: TrackResult, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(new, old) canonical meshes of frames ``indices``: the mesh to draw, the tracked one."""
        return planned_meshes(track, self.motion, self.identity, indices)

    def crop_vertices(self, track: TrackResult, indices: np.ndarray,
                      motion: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(new, old) meshes of frames ``indices`` (all usable) posed into their crops' pixels; with
        ``motion`` (rows, or one row for all) that motion below the nose instead of the plan's."""
        def pose(canonical: np.ndarray) -> np.ndarray:
            return project_to_crop(canonical.astype(np.float64), track.scale[indices].astype(np.float64),
                                   track.rotation[indices].astype(np.float64),
                                   track.translation[indices].astype(np.float64), self.mats[indices])
        new, old = self.meshes(track, indices) if motion is None else \
            composed_meshes(track, np.asarray(indices), motion, self.identity)
        return pose(new), pose(old)

    def predicted_opening(self, track: TrackResult, chunk: int = 1024) -> np.ndarray:
        """(T,) the mouth opening the plan intends (QA: did the renderer follow it)."""
        return np.concatenate([mouth_opening(self.meshes(track, np.arange(a, min(a + chunk, track.n_frames)))[0])
                               for a in range(0, track.n_frames, chunk)]).astype(np.float32)


def speech_pauses(settings: Settings, track: TrackResult, samples: np.ndarray) -> np.ndarray | None:
    """(T,) ``pause_gate`` of the new speech at the video's frames; None when resting is off."""
    if settings.rest_min_pause_s <= 0:
        return None
    return pause_gate(speech_frames(Audio(samples, SAMPLE_RATE), track.timestamps),
                      max(1, int(round(settings.rest_min_pause_s * track.fps))))


def predicted_motion(settings: Settings, model: ReSyncer, features: AudioFeatures | None, cache: FeatureCache | None,
                     track: TrackResult, usable: np.ndarray, samples: np.ndarray,
                     style_displacements: np.ndarray | None, video_uri: str,
                     rest: np.ndarray | None = None, gate: np.ndarray | None = None) -> FrameStore:
    """(T, V, 3) displacements for the new speech in the speaker's style (the reference window of
    this video unless another is given), opened ``motion_gain`` times about the speaker's rest pose
    (``rest``, default ``rest_pose``) and eased to it in long pauses (``gate``, default
    ``speech_pauses``). Written to disk a window at a time as the Style-SyncFormer makes them: the
    plan never holds a whole video's motion in memory."""
    if features is None:
        raise ResyncError(ErrorClass.MODEL_ERROR, "no audio feature extractor configured", item=video_uri)
    style = style_displacements if style_displacements is not None else \
        reference_window(track.displacements, usable, model.config.syncformer.style_window)
    rest = rest_pose(track, usable) if rest is None else rest
    gate = speech_pauses(settings, track, samples) if gate is None else gate
    if gate is not None and not gate.any():
        gate = None
    out = FrameStore(track.n_frames, (model.config.syncformer.n_vertices, 3), np.float32)
    try:
        for s, block in motion_blocks(model, features, cache, samples, track, style, settings.readout_weight):
            if settings.motion_gain != 1.0:
                block = articulate(block, rest, settings.motion_gain)
            if gate is not None:
                ease_to_rest(block, gate[s:s + len(block)], rest)
            out.write(s, block)
    except (RuntimeError, ValueError) as e:
        raise ResyncError(ErrorClass.MODEL_ERROR, f"Style-SyncFormer failed: {e}", item=video_uri) from e
    return out


def plan_dub(settings: Settings, model: ReSyncer, features: AudioFeatures | None, cache: FeatureCache | None,
             track: TrackResult, samples: np.ndarray, video_uri: str,
             displacements: np.ndarray | FrameStore | None = None, style_displacements: np.ndarray | None = None,
             identity: np.ndarray | None = None) -> DubPlan:
    """The plan for this video and speech. ``displacements``: motion to show instead of predicting it
    (video-driven lip sync; an array, or rows on disk such as a track's own, read a chunk at a time);
    ``identity``: another face's template (a face swap)."""
    usable = usable_frames(track, video_uri)
    rest = gate = None
    if displacements is not None:
        predicted = displacements if isinstance(displacements, FrameStore) and displacements.dtype == np.float32 \
            else np.array(displacements, np.float32)
        if tuple(predicted.shape) != tuple(track.displacements.shape):
            raise ResyncError(ErrorClass.UNSUPPORTED_INPUT, f"driving motion has shape {predicted.shape}, "
                              f"the video needs {track.displacements.shape}", item=video_uri)
    else:
        rest, gate = rest_pose(track, usable), speech_pauses(settings, track, samples)
        predicted = predicted_motion(settings, model, features, cache, track, usable, samples, style_displacements,
                                     video_uri, rest, gate)
    mats = crop_matrices(track, model.size, settings.crop_size)
    whole_face = identity is not None
    factor = detail_factor(mats[usable], settings.detail_max_factor) \
        if settings.detail_transfer and not whole_face else 0   # a swap must not keep the source's skin
    resting = gate if gate is not None and gate.any() and settings.rest_mouth and not whole_face else None
    return DubPlan(usable, predicted, identity, mats, whole_face, factor, rest, resting)


__all__ = ["DubAudio", "DubPlan", "dub_audio", "plan_dub", "predicted_motion", "speech_pauses", "planned_meshes", "composed_meshes", "crop_vertices",
           "predict_displacements", "articulate", "lower_face_weights", "reference_window", "reference_frame", "frontal_frame", "fit_audio_length",
           "video_duration", "renderable", "usable_frames", "rest_pose", "rest_in_pauses", "pause_gate", "ease_to_rest",
           "motion_blocks"]
