"""Dubbing one video with one audio track: the single-item path that ``resync dub`` and the dubbing
actor share, as a streaming pipeline of stages joined by bounded queues.

    decode (tasks.decode, own thread) -> [track: done before, cached per video] -> plan
    (tasks.dub_plan: audio, features, dynamics, meshes) -> redraw (tasks.redraw, the generator on
    ``redraw_workers`` threads) -> composite (own thread) -> encode (tasks.encode, this thread)
    -> mux + publish

Memory is bounded by the chunk size and the queue depths (``tasks.stream``), never by the video's
length: frames exist only inside a chunk in flight, the rest is per-frame geometry.

Output policy: the source's frame count, timestamps (variable frame rates kept), resolution and
duration. Audio shorter than the video is padded with silence, longer audio is cut at the end of
the video (the overhang is reported). Frames without a usable face (none, too small, extreme pose)
pass through unchanged and are counted.

The three inputs the modes rewire (DESIGN section 2) stay separate: ``DubInputs`` can carry
displacements (video-driven), a style source (style transfer) and a reference identity (face swap:
another person's crop and face shape; then the whole face is redrawn, not only the lower face).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from catalogs.settings import Settings
from catalogs.storage import Storage
from models.audio_features import AudioFeatures, FeatureCache
from models.resyncer import ReSyncer
from tasks.decode import Chunk, FramePool, VideoSource, chunk_frames, local_path
from tasks.detail import high_band
from tasks.dub_plan import DubPlan, dub_audio, plan_dub, reference_frame, usable_frames, video_duration
from tasks.encode import AudioEncoding, encode_h264, mux_audio
from tasks.frame_store import FrameStore, use_directory
from tasks.geometry import warp_crop
from tasks.malloc import reuse_large_allocations
from tasks.mouth_interior import MouthReference, speaker_mouth
from tasks.redraw import ChunkRedrawer, RedrawnChunk, redraw, redraw_workers, to_tensor, torch_threads
from tasks.rest_mouth import RestMouth
from tasks.stream import Prefetch, ordered_map, tap
from tasks.track import TrackResult
from tasks.training_data import crop_matrices, project_to_crop

Observer = Callable[[np.ndarray, np.ndarray, np.ndarray], None]   # (indices, source frames, output frames)


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
    intended_marks: FrameStore | None = None      # (T, V, 2) planned landmarks in the QA crop (when observed), on disk
    detail_factor: int = 0                        # texture carried over this many times finer than the crop; 0: off
    teeth_frame: int | None = None                # the frame whose mouth interior the drawn mouths show; None: the generator's
    rest_frame: int | None = None                 # the frame the still mouth of the pauses is drawn on; None: no pauses


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
    mouth_reference: MouthReference | None = None  # the open mouth whose teeth to show (with settings.mouth_interior)

    @property
    def swaps_face(self) -> bool:
        """Another identity's face shape is given: redraw the whole face, not only the mouth."""
        return self.reference_template is not None


def dub(storage: Storage, settings: Settings, video_uri: str, inputs: DubInputs, output_uri: str, model: ReSyncer,
        features: AudioFeatures | None, track: TrackResult, cache: FeatureCache | None = None,
        progress: Callable[[int, int], None] | None = None, observer: Observer | None = None,
        observer_crop: int = 256) -> DubResult:
    """Dub ``video_uri`` (already tracked) and publish ``output_uri``. Raises ``ResyncError``.

    ``observer(indices, source frames, output frames)`` sees every chunk as it is encoded (QA)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reuse_large_allocations(settings.malloc_reuse_mb)    # process-wide and idempotent: chunks reuse their memory
    use_directory(settings.spill_dir)                    # process-wide too: where the plan's motion waits
    duration = video_duration(track)
    usable_frames(track, video_uri)                       # no face at all fails before anything loads
    audio = dub_audio(storage, settings, inputs.audio_uri, duration)
    timings["audio_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    plan = plan_dub(settings, model, features, cache, track, audio.samples, video_uri, inputs.displacements,
                    inputs.style_displacements, inputs.reference_template)
    audio.samples = np.empty(0, np.float32)              # planned: the output takes its sound from the file
    timings["dynamics_s"] = time.perf_counter() - t

    workdir = tempfile.mkdtemp(prefix="resync-dub-")
    try:
        with ExitStack() as stack:
            video = stack.enter_context(VideoSource(storage, video_uri, threads=settings.decode_threads))
            sound = stack.enter_context(encoded_audio(storage, inputs.audio_uri, workdir, duration))
            # without an observer the frames are pasted in place and read last by the encoder: once it
            # has taken a chunk's frames, its buffer is decoded into again
            keep_source = observer is not None
            pool = None if keep_source else FramePool()
            decoded = stack.enter_context(decoded_chunks(settings, video, pool))   # decoding starts now
            redrawer = chunk_redrawer(settings, model, track, plan, inputs, video, keep_source)
            silent, final = os.path.join(workdir, "video.mp4"), os.path.join(workdir, "dub.mp4")
            t = time.perf_counter()
            redrawn: list[int] = []
            with torch_threads(redraw_workers(settings, model), model):
                frames = stream_frames(settings, video.n_frames, decoded, pool, redrawer,
                                       redraw_workers(settings, model), observer, progress, timings, redrawn)
                written = encode_h264(silent, frames, track.fps, track.timestamps, settings.output_crf,
                                      settings.output_preset)
            timings["redraw_wall_s"] = time.perf_counter() - t   # decode, redraw, composite, encode, overlapped
            t = time.perf_counter()
            publish(storage, sound, silent, final, output_uri)
            timings["mux_publish_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    timings["total_s"] = time.perf_counter() - t0
    intended = planned_marks(settings, track, plan, observer_crop) if observer else None
    rendered = sum(redrawn)
    return DubResult(output_uri, written, rendered, written - rendered, track.fps, audio.seconds, duration,
                     audio.overhang_s, model.version, timings, plan.predicted_opening(track), intended, plan.detail_factor,
                     redrawer.interior.frame if redrawer.interior is not None else None,
                     redrawer.rest.frame if redrawer.rest is not None else None)


def chunk_redrawer(settings: Settings, model: ReSyncer, track: TrackResult, plan: DubPlan, inputs: DubInputs,
                   video: VideoSource, keep_source: bool = True) -> ChunkRedrawer:
    """The redraw stage for this dub, with the reference identity encoded once: the given crop (a
    face swap) or this video's most typical frontal frame. ``keep_source``: the decoded frames are
    still needed after compositing (an observer compares them with the output)."""
    if inputs.reference_crop is not None:
        ref = inputs.reference_crop
    else:
        r = reference_frame(track, plan.usable)
        ref = warp_crop(video.frame(r), plan.mats[r], model.size)
    codes = model.reference_codes(to_tensor(ref[None])[0])
    texture = (ref, inputs.reference_vertices) if plan.whole_face and inputs.reference_vertices is not None else None
    # the compiled generator pads every call to its batch: make it the chunk's length, so the 8-frame
    # chunks of 1080p do not pay for 64
    batch = chunk_frames(*video.size, settings.decode_chunk, settings.decode_chunk_mb)
    return ChunkRedrawer(settings, model, track, plan, codes, texture, batch, keep_source,
                         dub_mouth_reference(settings, model, track, plan, inputs, video),
                         dub_rest_mouth(settings, model, track, plan, video, codes))


def dub_rest_mouth(settings: Settings, model: ReSyncer, track: TrackResult, plan: DubPlan, video: VideoSource,
                   codes: torch.Tensor) -> RestMouth | None:
    """The still mouth of the pauses: the speaker's rest pose drawn once, the way every frame is drawn,
    on a frontal frame of this video whose real mouth is at rest (its lips are the detail); None when
    the plan never rests (``plan.rest_weight``)."""
    if plan.rest_weight is None or plan.rest is None:
        return None
    r = reference_frame(track, plan.usable, opening_quantile=0.1)
    frame = video.frame(r)
    crop = warp_crop(frame, plan.mats[r], model.size)
    new, old = plan.crop_vertices(track, np.array([r]), plan.rest)
    drawn, _ = redraw(model, crop[None], new, old, codes, amp=settings.amp_inference)
    rest = RestMouth(drawn[0], new[0, :, :2].astype(np.float32), r)
    if plan.detail_factor > 0:
        f = plan.detail_factor
        fine = warp_crop(frame, (plan.mats[r] * f).astype(plan.mats.dtype), model.size * f)
        rest.detail = high_band(fine[None], max(4, int(round(model.size * settings.detail_from))))[0]
        rest.detail_points = (old[0, :, :2] * f).astype(np.float32)
    return rest


def dub_mouth_reference(settings: Settings, model: ReSyncer, track: TrackResult, plan: DubPlan, inputs: DubInputs,
                        video: VideoSource) -> MouthReference | None:
    """The open mouth whose interior fills the drawn openings: the given one, else the one of this
    video's wide frontal mouths that shows the most teeth; None when ``settings.mouth_interior`` is off, the dub is a face swap
    or has no detail transfer, or the speaker never opens wide enough."""
    if not settings.mouth_interior or plan.whole_face or plan.detail_factor <= 0:
        return None
    if inputs.mouth_reference is not None:
        return inputs.mouth_reference
    return speaker_mouth(video.frame, track, plan.usable, plan.mats * plan.detail_factor, model.size * plan.detail_factor,
                         settings.mouth_interior_min_opening)


def decoded_chunks(settings: Settings, video: VideoSource, pool: FramePool | None) -> Prefetch[Chunk]:
    """The decode stage: chunks decoded on their own thread, ``settings.decode_queue`` ahead of the
    redraw, from now on (into ``pool``'s buffers when given)."""
    return Prefetch(video.chunks(settings.decode_chunk, chunk_mb=settings.decode_chunk_mb, buffers=pool),
                    settings.decode_queue, name="decode")


def stream_frames(settings: Settings, n_frames: int, decoded: Iterable[Chunk], pool: FramePool | None,
                  redrawer: ChunkRedrawer, workers: int, observer: Observer | None,
                  progress: Callable[[int, int], None] | None, timings: dict[str, float],
                  redrawn: list[int]) -> Iterator[np.ndarray]:
    """Output frames in order: the ``decoded`` chunks redrawn by the generator on ``workers``
    threads, pasted back on another, watched by ``observer`` on another, handed to the encoder;
    a chunk's buffer goes back to ``pool`` once the encoder has its frames."""
    timings.update(redraw_s=0.0, render_s=0.0, composite_s=0.0)
    generated = ordered_map(redrawer.generate, decoded, workers, name="redraw")
    done: Iterable[RedrawnChunk] = ordered_map(redrawer.composite, generated, settings.composite_workers,
                                               name="composite")
    if observer is not None:
        done = tap(lambda r: observer(r.chunk.indices, r.chunk.frames, r.frames), done, name="observe")
    for r in done:
        for key, v in r.timings.items():
            timings[key] += v
        redrawn.append(r.rendered)
        if progress:
            progress(int(r.chunk.indices[-1]) + 1, n_frames)
        yield from r.frames
        if pool is not None and r.frames is r.chunk.frames:
            pool.put(r.chunk.frames)


@contextmanager
def encoded_audio(storage: Storage, audio_uri: str | None, workdir: str, seconds: float) -> Iterator[AudioEncoding | None]:
    """The new audio (padded or cut to the video's ``seconds``) encoding beside the frames; None
    without audio. Stopped if the dub fails first."""
    if not audio_uri:
        yield None
        return
    with local_path(storage, audio_uri) as audio_path:
        encoding = AudioEncoding(audio_path, os.path.join(workdir, "audio.m4a"), seconds)
        try:
            yield encoding
        finally:
            encoding.stop()


def publish(storage: Storage, sound: AudioEncoding | None, silent: str, final: str, output_uri: str) -> None:
    """Mux the encoded audio with the video and publish the finished file."""
    mux_audio(silent, sound.result() if sound is not None else None, final)
    storage.put_file(final, output_uri)


def planned_marks(settings: Settings, track: TrackResult, plan: DubPlan, crop: int, chunk: int = 1024) -> FrameStore:
    """(T, V, 2) the planned landmarks in the QA crop of side ``crop`` (NaN where not redrawn), on disk."""
    mats = crop_matrices(track, crop, settings.crop_size)
    usable = np.flatnonzero(plan.usable)
    out = FrameStore(track.n_frames, (plan.motion.shape[1], 2), np.float32, fill=np.nan)
    for a in range(0, len(usable), chunk):
        idx = usable[a:a + chunk]
        new = plan.meshes(track, idx)[0]
        out[idx] = project_to_crop(new.astype(np.float64), track.scale[idx].astype(np.float64),
                                   track.rotation[idx].astype(np.float64), track.translation[idx].astype(np.float64),
                                   mats[idx])[..., :2]
    return out


__all__ = ["DubInputs", "DubResult", "dub", "chunk_redrawer", "decoded_chunks", "stream_frames", "encoded_audio", "publish",
           "planned_marks"]
