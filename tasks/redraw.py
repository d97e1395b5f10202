"""Redrawing the mouth of decoded frames: stages 4 and 5 of the dub (redraw -> composite).

A ``ChunkRedrawer`` takes one decoded chunk of full-resolution frames and returns it with the
lower face (or, for a face swap, the whole face) of every usable frame redrawn by the generator
for the planned mesh and pasted back. Only the aligned crops go through the network; the full
frames stay in the chunk, which the pipeline bounds (``tasks.stream``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from catalogs.settings import Settings
from models.generator import masked_target
from models.renderer import face_mask, mouth_mask, render_mesh, warp_texture
from models.resyncer import ReSyncer
from tasks.decode import Chunk
from tasks.detail import paste_redrawn
from tasks.dub_plan import DubPlan
from tasks.mouth_interior import MouthReference
from tasks.rest_mouth import RestMouth, hold_still
from tasks.geometry import warp_crop
from tasks.track import TrackResult


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
        ref = to_tensor(texture[0][None]).expand(n, -1, -1, -1)
        ref_verts = torch.from_numpy(texture[1][None].astype(np.float32)).expand(n, -1, -1)
        moved, coverage = warp_texture(ref, ref_verts, torch.from_numpy(new_verts), size)
    target = masked_target(to_tensor(crops), mask, moved, coverage)
    fake = model.render(mesh, target, codes, amp=amp, compiled=compiled, batch=batch)
    return to_uint8(fake), mask[:, 0].numpy()


@dataclass
class RedrawnChunk:
    """A chunk's source frames, the same frames with the face redrawn, and what it cost."""
    chunk: Chunk
    frames: np.ndarray
    rendered: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class GeneratedChunk:
    """A chunk between the two stages: the generator's crops for its usable frames, not pasted yet."""
    chunk: Chunk
    todo: list[int]                  # positions in the chunk of the redrawn frames
    generated: np.ndarray | None     # (len(todo), S, S, 3) uint8
    masks: np.ndarray | None         # (len(todo), S, S) the redraw masks
    new_verts: np.ndarray | None     # (len(todo), V, 3) in crop pixels
    old_verts: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ChunkRedrawer:
    """The redraw stage (``generate``: crops -> generator) and the composite stage (``composite``:
    back into the frames) for one dub. Separate calls, so the pipeline runs them on separate
    threads: the generator draws the next chunk while the last one is pasted. Keeps no state
    per call (thread-safe)."""
    settings: Settings
    model: ReSyncer
    track: TrackResult
    plan: DubPlan
    codes: torch.Tensor                                   # the reference identity, encoded once
    texture: tuple[np.ndarray, np.ndarray] | None = None  # face swap: (reference crop, its vertices)
    batch: int | None = None                              # generator batch: the video's chunk length
    keep_source: bool = True                              # composite into a copy: the chunk's frames stay the source
    interior: MouthReference | None = None                # the speaker's open mouth, its teeth copied into each opening
    rest: RestMouth | None = None                         # the still mouth shown in the pauses (plan.rest_weight)

    def generate(self, chunk: Chunk) -> GeneratedChunk:
        timings = {"redraw_s": 0.0, "render_s": 0.0}
        todo = [k for k, i in enumerate(chunk.indices) if self.plan.usable[i]]
        if not todo:
            return GeneratedChunk(chunk, todo, None, None, None, None, timings)
        ii = chunk.indices[todo]
        s, size = self.settings, self.model.size
        t = time.perf_counter()
        new_verts, old_verts = self.plan.crop_vertices(self.track, ii)
        crops = np.stack([warp_crop(chunk.frames[k], m, size) for k, m in zip(todo, self.plan.mats[ii])])
        generated, masks = redraw(self.model, crops, new_verts, old_verts, self.codes, timings, s.amp_inference,
                                  s.compile_generator, self.batch or s.decode_chunk, self.plan.whole_face, self.texture)
        if self.rest is not None and self.plan.rest_weight is not None:
            hold_still(generated, new_verts, self.plan.rest_weight[ii], self.rest)
        timings["redraw_s"] += time.perf_counter() - t
        return GeneratedChunk(chunk, todo, generated, masks, new_verts, old_verts, timings)

    def composite(self, g: GeneratedChunk) -> RedrawnChunk:
        """Paste the generated crops into the chunk's frames: into a copy when ``keep_source`` (someone
        compares source and output, QA), else into the decoded frames themselves (no 1080p copy)."""
        timings = {**g.timings, "composite_s": 0.0}
        out = g.chunk.frames.copy() if self.keep_source else g.chunk.frames
        if not g.todo:
            return RedrawnChunk(g.chunk, out, 0, timings)
        t = time.perf_counter()
        mats = self.plan.mats[g.chunk.indices[g.todo]]
        weight = self.plan.rest_weight[g.chunk.indices[g.todo]] if self.plan.rest_weight is not None else None
        paste_redrawn([out[k] for k in g.todo], g.generated, mats, g.old_verts, g.new_verts, g.masks,
                      self.plan.detail_factor, self.settings.detail_from, self.interior, self.rest, weight)
        timings["composite_s"] += time.perf_counter() - t
        return RedrawnChunk(g.chunk, out, len(g.todo), timings)

    def __call__(self, chunk: Chunk) -> RedrawnChunk:
        """Both stages on one chunk, in this thread."""
        return self.composite(self.generate(chunk))


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


def warm_generator(settings: Settings, model: ReSyncer, batches: Iterable[int] = ()) -> None:
    """Run the generator once per batch on a blank batch the way ``dub`` runs it (same precision,
    compile setting and threads), so that a long-lived worker compiles before its first item.

    The compiled generator is built for one batch, and a dub's batch is its chunk length (fewer
    frames for large videos, ``tasks.decode.chunk_frames``): ``batches`` are those of the videos to
    come, ``settings.decode_chunk`` when none is given."""
    size = model.size
    blank = np.zeros((1, size, size, 3), np.uint8)
    codes = model.reference_codes(to_tensor(blank)[0])
    workers = redraw_workers(settings, model)
    with ThreadPoolExecutor(1, thread_name_prefix="redraw") as pool, torch_threads(workers, model):
        for batch in sorted(set(batches) or {settings.decode_chunk}):
            pool.submit(model.render, torch.zeros(batch, 1, size, size), torch.zeros(batch, 3, size, size), codes,
                        settings.amp_inference, settings.compile_generator, batch).result()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [-1, 1] -> (B, S, S, 3) uint8."""
    return images.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


__all__ = ["ChunkRedrawer", "GeneratedChunk", "RedrawnChunk", "redraw", "redraw_workers", "torch_threads", "warm_generator",
           "to_tensor", "to_uint8"]
