"""Dubbing one video with one audio track: the single-item path that ``resync dub`` and the flows share.

track (cached) -> audio features of the new speech at the video's frame times -> Style-SyncFormer
displacements in the speaker's own style -> below the nose, predicted motion replaces the tracked
one -> mesh posed with every frame's head pose and rendered into the aligned crop -> the rewired
generator redraws the lower face with the identity of a reference crop -> composite back with a
feathered lower-face mask -> H.264 with the new audio, published only when complete.

Output policy: the source's frame count, timestamps (variable frame rates kept), resolution and
duration. Audio shorter than the video is padded with silence, longer audio is cut at the end of
the video (the overhang is reported). Frames without a usable face (none, too small, extreme pose)
pass through unchanged and are counted.

The three inputs the modes rewire (DESIGN section 2) stay separate: ``DubInputs`` can carry
displacements (video-driven), a style source (style transfer) and a reference identity (face swap:
another person's crop and face shape; then the whole face is redrawn, not only the lower face).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from models.audio_features import AudioFeatures, FeatureCache, frame_tokens
from models.generator import masked_target
from models.renderer import face_mask, mouth_mask, render_mesh, warp_texture
from models.resyncer import ReSyncer
from tasks.audio import SAMPLE_RATE, Audio, load_audio, pause_frames, speech_frames
from tasks.decode import VideoSource, local_path
from tasks.detail import composite_redrawn, detail_factor
from tasks.encode import encode_h264
from tasks.geometry import warp_crop
from tasks.landmarks import LEFT_EYE, MOUTH_CORNERS, NOSE_TIP, RIGHT_EYE, mouth_opening
from tasks.track import TrackResult
from tasks.training_data import crop_matrices, project_to_crop

log = logging.getLogger(__name__)


@dataclass
class DubResult:
    output_uri: str
    frames: int
    rendered_frames: int          # frames whose lower face was redrawn
    passed_through: int           # frames kept as they were (no usable face)
    fps: float
    audio_seconds: float
    video_seconds: float
    audio_overhang_s: float       # translated speech cut off at the end of the video
    model_version: str | None
    timings: dict[str, float] = field(default_factory=dict)
    predicted_opening: np.ndarray | None = None   # (T,) intended mouth opening (QA: mesh-following)
    intended_marks: np.ndarray | None = None      # (T, V, 2) planned landmarks in the QA crop (when observed)
    detail_factor: int = 0                        # texture carried over this many times finer than the crop; 0: off


# ---------------------------------------------------------------------------------------------
# geometry helpers


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


def reference_window(displacements: np.ndarray, usable: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` consecutive usable frames with the most mouth motion: the speaker's style
    (at training any window of the clip was a reference; the liveliest one says most)."""
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        raise ResyncError(ErrorClass.NO_FACE, "no usable face frame to take a speaking style from")
    d = displacements[idx]
    if len(idx) <= length:
        return d
    energy = np.nan_to_num(np.linalg.norm(np.diff(d, axis=0), axis=-1).mean(-1))
    cum = np.concatenate([[0.0], np.cumsum(energy)])
    best = int(np.argmax(cum[length - 1:] - cum[: len(cum) - length + 1]))
    return d[best: best + length]


def reference_frame(track: TrackResult, usable: np.ndarray) -> int:
    """The frame whose crop stands for the person: frontal and with a median mouth opening."""
    idx = np.flatnonzero(usable)
    if len(idx) == 0:
        raise ResyncError(ErrorClass.NO_FACE, "no usable face frame for a reference crop")
    opening = np.nan_to_num(mouth_opening(track.smoothed[idx]))
    yaw = np.abs(np.nan_to_num(track.euler[idx, 0]))
    score = np.abs(opening - np.median(opening)) / (opening.std() + 1e-6) + yaw / 15.0
    return int(idx[int(np.argmin(score))])


def fit_audio_length(samples: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Pad with silence or cut, to exactly ``seconds``: the video's duration decides the output's."""
    n = int(round(seconds * sample_rate))
    return samples[:n] if len(samples) >= n else np.pad(samples, (0, n - len(samples)))


def video_duration(track: TrackResult) -> float:
    ts = track.timestamps
    step = np.median(np.diff(ts)) if len(ts) > 1 else 1.0 / max(track.fps, 1e-6)
    return float(ts[-1] + step) if len(ts) else 0.0


# ---------------------------------------------------------------------------------------------
# encoding


def mux_audio(video_path: str, audio_path: str | None, out_path: str, seconds: float) -> None:
    """Copy the video stream and add the audio as AAC, padded with silence or cut to ``seconds``."""
    cmd = ["ffmpeg", "-y", "-v", "error", "-i", video_path]
    if audio_path:
        cmd += ["-i", audio_path, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "160k", "-ar", "48000",
                "-af", "apad", "-t", f"{seconds:.6f}"]
    cmd += ["-c:v", "copy", "-movflags", "+faststart", out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:              # a full disk under the work folder is the storage's failure, not ours
        full = "No space left on device" in proc.stderr
        raise ResyncError(ErrorClass.STORAGE_ERROR if full else ErrorClass.INTERNAL,
                          f"ffmpeg mux failed: {proc.stderr.strip()[-400:]}")


# ---------------------------------------------------------------------------------------------
# the dub


@dataclass
class DubInputs:
    """What drives the dub. Only ``audio_uri`` is needed for audio-driven lip sync; the rest are
    the seams of the other modes (each defaults to this video's own)."""
    audio_uri: str | None
    displacements: np.ndarray | None = None      # (T, V, 3) motion to show instead of predicting it
    style_displacements: np.ndarray | None = None  # reference motion whose style to speak in
    reference_crop: np.ndarray | None = None     # (S, S, 3) uint8 identity to draw
    reference_template: np.ndarray | None = None  # (V, 3) that identity's face shape: a face swap
    reference_vertices: np.ndarray | None = None  # (V, 3) that face's mesh in the reference crop's pixels

    @property
    def swaps_face(self) -> bool:
        """Another identity's face shape is given: redraw the whole face, not only the mouth."""
        return self.reference_template is not None


def planned_meshes(track: TrackResult, predicted: np.ndarray,
                   identity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(new, old) canonical meshes per frame: below the nose the predicted motion, above it the
    tracked one (the upper face is kept, so its mesh must match the video). With ``identity`` (a
    face swap) the same motion moves that person's template instead of this speaker's."""
    weights = lower_face_weights(track.template)[None, :, None]
    tracked = np.nan_to_num(track.displacements)
    templates = track.templates[track.shot_index]
    shape = templates if identity is None else np.broadcast_to(identity[None], templates.shape)
    new = shape + tracked * (1 - weights) + np.nan_to_num(predicted) * weights
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


@torch.no_grad()
def redraw(model: ReSyncer, crops: np.ndarray, new_verts: np.ndarray, old_verts: np.ndarray, codes: torch.Tensor,
           timings: dict[str, float] | None = None, amp: bool = False, compiled: bool = False,
           batch: int | None = None, whole_face: bool = False,
           texture: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Redraw the lower face (or with ``whole_face`` the whole face) of aligned crops (B, S, S, 3)
    uint8 for the meshes ``new_verts``.

    The mask covers both the old and the new face (an opening jaw reaches lower than the closed
    one; a swapped face may be wider). ``texture`` (a face swap): (crop, its vertices) of the person
    to show, whose face is moved onto ``new_verts`` and fills the mask. Returns the generated crops
    (uint8) and that mask (B, S, S) in [0, 1].
    """
    t = time.perf_counter()
    size = crops.shape[1]
    mesh = render_mesh(torch.from_numpy(new_verts), size)
    region = face_mask if whole_face else mouth_mask
    mask = torch.maximum(region(torch.from_numpy(new_verts), size), region(torch.from_numpy(old_verts), size))
    if timings is not None:
        timings["render_s"] = timings.get("render_s", 0.0) + time.perf_counter() - t
    moved = coverage = None
    if texture is not None:
        n = len(crops)
        ref = _to_tensor(texture[0][None]).expand(n, -1, -1, -1)
        ref_verts = torch.from_numpy(texture[1][None].astype(np.float32)).expand(n, -1, -1)
        moved, coverage = warp_texture(ref, ref_verts, torch.from_numpy(new_verts), size)
    target = masked_target(_to_tensor(crops), mask, moved, coverage)
    fake = model.render(mesh, target, codes, amp=amp, compiled=compiled, batch=batch)
    return _to_uint8(fake), mask[:, 0].numpy()


def rest_pose(track: TrackResult, usable: np.ndarray, share: float = 0.1) -> np.ndarray:
    """(V, 3) the speaker's own mouth at rest: the mean displacement of their usable frames with the
    least open mouth (the lowest ``share``). Zero displacement is the average face, half open."""
    idx = np.flatnonzero(usable)
    opening = np.nan_to_num(mouth_opening(track.smoothed[idx]), nan=np.inf)
    keep = idx[opening <= np.quantile(opening[np.isfinite(opening)], share)] if np.isfinite(opening).any() else idx
    return np.nan_to_num(track.displacements[keep]).mean(0).astype(np.float32)


def rest_in_pauses(predicted: np.ndarray, speech: np.ndarray, rest: np.ndarray, min_pause: int,
                   ramp: int = 3) -> np.ndarray:
    """Predicted motion eased to ``rest`` in the pauses of the new speech (``min_pause`` frames or
    longer), over ``ramp`` frames each side. The Style-SyncFormer never saw digital silence or long
    pauses of a translated track, and left alone its mouth hangs half open and keeps moving there."""
    quiet = pause_frames(speech, min_pause, settle=ramp).astype(np.float32)
    if not quiet.any():
        return predicted
    gate = np.convolve(quiet, np.ones(2 * ramp + 1, np.float32) / (2 * ramp + 1), "same") * ~speech.astype(bool)
    gate = gate[:, None, None]
    return (predicted * (1 - gate) + rest[None] * gate).astype(np.float32)


def predict_displacements(model: ReSyncer, features: AudioFeatures, cache: FeatureCache | None, samples: np.ndarray,
                          track: TrackResult, style_displacements: np.ndarray) -> np.ndarray:
    """(T, V, 3) displacements for the new speech at the video's frame times, in the given style."""
    feats = cache.get_or_compute(samples, features) if cache else features(samples)
    tokens = frame_tokens(feats, track.timestamps, features.rate_hz, features.offset_s, model.config.syncformer.audio_offsets)
    style = model.style_code(torch.from_numpy(np.nan_to_num(style_displacements).astype(np.float32)))
    return model.displacements(torch.from_numpy(tokens), style).numpy()


def dub(storage: Storage, settings: Settings, video_uri: str, inputs: DubInputs, output_uri: str, model: ReSyncer,
        features: AudioFeatures | None, track: TrackResult, cache: FeatureCache | None = None,
        progress: Callable[[int, int], None] | None = None,
        observer: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
        observer_crop: int = 256) -> DubResult:
    """Dub ``video_uri`` (already tracked) and publish ``output_uri``. Raises ``ResyncError``.

    ``observer(indices, source frames, output frames)`` sees every chunk as it is encoded (QA)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    n = track.n_frames
    duration = video_duration(track)
    usable = renderable(track)
    if not usable.any():
        raise ResyncError(ErrorClass.NO_FACE, "no frame has a usable face (none, too small or turned away)",
                          item=video_uri)
    audio_seconds, overhang = 0.0, 0.0
    samples = np.zeros(int(round(duration * SAMPLE_RATE)), np.float32)
    if inputs.audio_uri:
        audio = load_audio(storage, inputs.audio_uri)
        audio_seconds = audio.duration_s
        if audio_seconds > settings.max_audio_seconds:
            raise ResyncError(ErrorClass.AUDIO_TOO_LONG, f"{audio_seconds:.0f} s of audio, the limit is "
                              f"{settings.max_audio_seconds:.0f} s", item=inputs.audio_uri)
        overhang = max(0.0, audio_seconds - duration)
        samples = fit_audio_length(audio.samples, duration)
    timings["audio_s"] = time.perf_counter() - t0

    # 1. 3D dynamics: predicted from the audio (or given, for video-driven lip sync).
    t = time.perf_counter()
    if inputs.displacements is not None:
        predicted = inputs.displacements.astype(np.float32)
        if predicted.shape != track.displacements.shape:
            raise ResyncError(ErrorClass.UNSUPPORTED_INPUT, f"driving motion has shape {predicted.shape}, "
                              f"the video needs {track.displacements.shape}", item=video_uri)
    else:
        if features is None:
            raise ResyncError(ErrorClass.MODEL_ERROR, "no audio feature extractor configured", item=video_uri)
        style_src = inputs.style_displacements if inputs.style_displacements is not None else \
            reference_window(track.displacements, usable, model.config.syncformer.style_window)
        try:
            predicted = predict_displacements(model, features, cache, samples, track, style_src)
        except (RuntimeError, ValueError) as e:
            raise ResyncError(ErrorClass.MODEL_ERROR, f"Style-SyncFormer failed: {e}", item=video_uri) from e
        if settings.rest_min_pause_s > 0:
            speech = speech_frames(Audio(samples, SAMPLE_RATE), track.timestamps)
            predicted = rest_in_pauses(predicted, speech, rest_pose(track, usable),
                                       max(1, int(round(settings.rest_min_pause_s * track.fps))))
    new_canonical, old_canonical = planned_meshes(track, predicted, inputs.reference_template)
    timings["dynamics_s"] = time.perf_counter() - t

    size = model.size
    mats = crop_matrices(track, size, settings.crop_size)
    new_verts = crop_vertices(track, new_canonical, usable, mats)
    old_verts = crop_vertices(track, old_canonical, usable, mats)

    # 2. The reference identity, encoded once.
    with VideoSource(storage, video_uri) as video:
        if inputs.reference_crop is not None:
            ref = inputs.reference_crop
        else:
            r = reference_frame(track, usable)
            ref = warp_crop(video.frame(r), mats[r], size)
        codes = model.reference_codes(_to_tensor(ref[None])[0])

        # 3. Render, generate and composite chunk by chunk, streaming into the encoder. Redraws run
        #    on worker threads (``redraw_workers``, sharing the torch threads) while this thread
        #    decodes the next chunk and encodes the last, and QA observes finished chunks on its own
        #    thread: decoding, encoding and measuring overlap the generator instead of waiting for it.
        timings.update(redraw_s=0.0, render_s=0.0, composite_s=0.0)
        rendered = 0
        whole_face = inputs.swaps_face
        texture = (ref, inputs.reference_vertices) if whole_face and inputs.reference_vertices is not None else None

        def redraw_chunk(chunk) -> tuple[object, np.ndarray, dict[str, float], int]:
            local = {"redraw_s": 0.0, "render_s": 0.0, "composite_s": 0.0}
            out = chunk.frames.copy()
            todo = [k for k, i in enumerate(chunk.indices) if usable[i]]
            if todo:
                ii = chunk.indices[todo]
                t1 = time.perf_counter()
                crops = np.stack([warp_crop(chunk.frames[k], mats[i], size) for k, i in zip(todo, ii)])
                gen, m = redraw(model, crops, new_verts[ii], old_verts[ii], codes, local, settings.amp_inference,
                                settings.compile_generator, settings.decode_chunk, whole_face, texture)
                t3 = time.perf_counter()
                pasted = composite_redrawn(chunk.frames[todo], gen, mats[ii], old_verts[ii], new_verts[ii], m, factor,
                                           settings.detail_from)
                for k, frame in zip(todo, pasted):
                    out[k] = frame
                local["composite_s"] += time.perf_counter() - t3
                local["redraw_s"] += t3 - t1
            return chunk, out, local, len(todo)

        workers = redraw_workers(settings, model)
        # detail transfer (0: off); a swap must not keep the source's skin
        factor = detail_factor(mats[usable], settings.detail_max_factor) \
            if settings.detail_transfer and not whole_face else 0

        def frames() -> Iterator[np.ndarray]:
            pending: deque = deque()
            observed: deque = deque()
            with ThreadPoolExecutor(workers, thread_name_prefix="redraw") as pool, \
                    ThreadPoolExecutor(1, thread_name_prefix="observe") as observing, torch_threads(workers, model):

                def finish() -> np.ndarray:
                    nonlocal rendered
                    chunk, out, local, count = pending.popleft().result()
                    for key, v in local.items():
                        timings[key] += v
                    rendered += count
                    if observer:
                        observed.append(observing.submit(observer, chunk.indices, chunk.frames, out))
                        while len(observed) > 2:      # bounded: a slow observer holds the dub back
                            observed.popleft().result()
                    if progress:
                        progress(int(chunk.indices[-1]) + 1, n)
                    return out

                for chunk in video.chunks(settings.decode_chunk):
                    pending.append(pool.submit(redraw_chunk, chunk))
                    while len(pending) > workers:
                        yield from finish()
                while pending:
                    yield from finish()
                while observed:
                    observed.popleft().result()

        workdir = tempfile.mkdtemp(prefix="resync-dub-")
        try:
            silent = os.path.join(workdir, "video.mp4")
            final = os.path.join(workdir, "dub.mp4")
            t = time.perf_counter()
            written = encode_h264(silent, frames(), track.fps, track.timestamps, settings.output_crf, settings.output_preset)
            timings["redraw_wall_s"] = time.perf_counter() - t   # decode, redraw, composite, encode, overlapped
            t = time.perf_counter()
            if inputs.audio_uri:
                with local_path(storage, inputs.audio_uri) as audio_path:
                    mux_audio(silent, audio_path, final, duration)
            else:
                mux_audio(silent, None, final, duration)
            storage.put_file(final, output_uri)
            timings["mux_publish_s"] = time.perf_counter() - t
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    timings["total_s"] = time.perf_counter() - t0
    intended = None
    if observer:
        qa_mats = crop_matrices(track, observer_crop, settings.crop_size)
        intended = crop_vertices(track, new_canonical, usable, qa_mats)[..., :2]
    return DubResult(output_uri, written, rendered, written - rendered, track.fps, audio_seconds, duration, overhang,
                     model.version, timings, mouth_opening(new_canonical).astype(np.float32), intended, factor)


def redraw_workers(settings: Settings, model: ReSyncer) -> int:
    """Chunks redrawn at once: ``settings.redraw_workers`` on CPU, one on a GPU (its kernels queue
    on one stream anyway)."""
    return 1 if model.device.type == "cuda" else max(1, settings.redraw_workers)


@contextmanager
def torch_threads(workers: int, model: ReSyncer) -> Iterator[None]:
    """Split this process's torch threads among ``workers`` concurrent redraws (restored after)."""
    before = torch.get_num_threads()
    if workers > 1 and model.device.type != "cuda":
        torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warm_generator(settings: Settings, model: ReSyncer) -> None:
    """Run the generator once on a blank batch the way ``dub`` runs it (same precision, compile
    setting, batch and threads), so that a long-lived worker compiles before its first item."""
    size, batch = model.size, settings.decode_chunk
    blank = np.zeros((1, size, size, 3), np.uint8)
    codes = model.reference_codes(_to_tensor(blank)[0])
    workers = redraw_workers(settings, model)
    with ThreadPoolExecutor(1, thread_name_prefix="redraw") as pool, torch_threads(workers, model):
        pool.submit(model.render, torch.zeros(batch, 1, size, size), torch.zeros(batch, 3, size, size), codes,
                    settings.amp_inference, settings.compile_generator, batch).result()


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [-1, 1] -> (B, S, S, 3) uint8."""
    return images.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


__all__ = ["DubInputs", "DubResult", "dub", "redraw", "warm_generator", "planned_meshes", "crop_vertices", "predict_displacements", "lower_face_weights", "reference_window", "reference_frame",
           "fit_audio_length", "mux_audio", "renderable", "rest_pose", "rest_in_pauses"]
