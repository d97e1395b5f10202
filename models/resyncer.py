"""ReSyncer: the Style-SyncFormer and the rewired generator as one versioned model.

The two learned parts always travel together (a speaker model fine-tunes both), with the name of
the audio features the SyncFormer was trained on: features of another extractor would be read as
nonsense, so loading checks it. One checkpoint folder = ``model.safetensors`` (tensors prefixed
``syncformer.`` / ``generator.`` / ``discriminator.``) + ``config.json``; the version is the
content hash (``models.checkpoint``). The discriminator is kept so that fine-tuning resumes the
adversarial game instead of restarting it.

The three inputs of inference are separate on purpose (DESIGN section 2): displacements (from
audio, or tracked from a driving video), the style code (this or another speaker's motion), and
the reference crop (this or another identity). Every mode rewires them; none needs other weights.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import ModelConfig, get_config
from models.discriminator import Discriminator
from models.generator import Generator
from models.precision import autocast
from models.readout import MotionReadout
from models.syncformer import build_syncformer

log = logging.getLogger(__name__)


@dataclass
class ModelCard:
    """What a person needs to trust a checkpoint: its lineage, data and measured quality."""
    kind: str = "base"                    # base | speaker
    speaker_id: str | None = None
    parent: str | None = None             # version of the model it was fine-tuned from
    audio_features: str = ""              # extractor name (models.audio_features) the SyncFormer reads
    training_data: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


class ReSyncer(nn.Module):
    """Style-SyncFormer + rewired generator (+ discriminator, for training only)."""

    def __init__(self, config: ModelConfig, card: ModelCard | None = None) -> None:
        super().__init__()
        self.config = config
        self.card = card or ModelCard()
        self.syncformer = build_syncformer(config.syncformer)
        self.generator = Generator(config.generator)
        self.discriminator = Discriminator(config.discriminator)
        # A linear read-out of the same audio tokens (models/readout.py) that dubs can blend with the
        # Style-SyncFormer's motion; fitted in closed form when a base's training asks for one, else None.
        self.readout: MotionReadout | None = None
        self.version: str | None = None
        # Whether the discriminator's weights are trained ones (loaded from a checkpoint that carries
        # them) rather than a fresh initialisation: a fine-tune lets a trained one play from its first step.
        self.discriminator_trained = False
        self.compile_cache_dir: str | None = None  # where compiled generators are kept (None: models.compiled's default)
        self._compiled: dict[tuple[int, bool], Callable] = {}  # (batch, amp) -> AOTInductor runner, made on first use
        self._compile_failed = False
        self._compile_lock = threading.Lock()      # one compile or load at a time

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def size(self) -> int:
        """Side of the aligned crops the generator draws."""
        return self.config.generator.size

    # --- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def style_code(self, reference_displacements: torch.Tensor) -> torch.Tensor:
        """(Tr, V, 3) reference motion -> (style_dim,) code: how this (or another) speaker moves."""
        window = reference_displacements[: self.config.syncformer.style_window]
        return self.syncformer.style(window[None].float().to(self.device))[0].cpu()

    @torch.no_grad()
    def displacements(self, audio: torch.Tensor, style: torch.Tensor, overlap: int = 32) -> torch.Tensor:
        """(T, token_dim) audio tokens at the video frame rate (``models.audio_features.frame_tokens``
        with this config's ``audio_offsets``) -> (T, V, 3) displacements.

        Sequences longer than the configured ``max_frames`` run in overlapping windows that are
        cross-faded, so an hour of audio costs linear time and no seam shows at window joins.
        """
        return self.displacements_windowed(lambda s, e: audio[s:e], len(audio), style, overlap)

    @torch.no_grad()
    def displacements_windowed(self, tokens: Callable[[int, int], torch.Tensor], t: int, style: torch.Tensor,
                               overlap: int = 32) -> torch.Tensor:
        """``displacements`` with the tokens of frames [s, e) made on demand by ``tokens(s, e)``, one
        window at a time: a long video never holds all its tokens (7 x 384 floats a frame) at once."""
        return torch.cat([block for _, block in self.displacement_blocks(tokens, t, style, overlap)])

    @torch.no_grad()
    def displacement_blocks(self, tokens: Callable[[int, int], torch.Tensor], t: int, style: torch.Tensor,
                            overlap: int = 32) -> Iterator[tuple[int, torch.Tensor]]:
        """(first frame, finished displacements) in frame order, a window's worth at a time: the
        frames no later window overlaps are handed on as soon as they are cross-faded, so only one
        window and its overlap are ever held, whatever the video's length."""
        limit = self.config.syncformer.max_frames
        style = style[None].float().to(self.device)
        if t <= limit:
            yield 0, self.syncformer(tokens(0, t).float().to(self.device)[None], style)[0].cpu()
            return
        overlap = min(overlap, limit // 4)
        hop = limit - overlap
        ramp = (torch.arange(overlap) + 1.0) / (overlap + 1.0)
        starts = list(range(0, max(t - limit, 0) + hop, hop))
        # sums of the weighted predictions and of the weights over frames [s, e) of the window in hand;
        # the first ``overlap`` rows carry what the window before left there
        carry_out, carry_w = torch.zeros(0, self.config.syncformer.n_vertices, 3), torch.zeros(0)
        for k, s in enumerate(starts):
            e = min(s + limit, t)
            pred = self.syncformer(tokens(s, e).float().to(self.device)[None], style)[0].cpu()
            w = torch.ones(e - s)
            if k > 0:
                w[:overlap] *= ramp[: e - s]
            last = k == len(starts) - 1
            if not last and e - s > overlap:
                w[-overlap:] *= ramp.flip(0)
            out = torch.zeros(e - s, *pred.shape[1:])
            weight = torch.zeros(e - s)
            out[:len(carry_out)] += carry_out
            weight[:len(carry_w)] += carry_w
            out += w[:, None, None] * pred
            weight += w
            done = e - s if last else min(hop, e - s)   # rows [s + hop, e) wait for the next window
            yield s, out[:done].div_(weight[:done].clamp_min(1e-6)[:, None, None])
            carry_out, carry_w = out[done:], weight[done:]

    @torch.no_grad()
    def reference_codes(self, reference: torch.Tensor) -> torch.Tensor:
        """(3, S, S) reference crop in [-1, 1] -> W+ codes (n_latent, style_dim): whose face it is."""
        return self.generator.encode_reference(reference[None].float().to(self.device))[0]

    @torch.no_grad()
    def render(self, mesh: torch.Tensor, masked_target: torch.Tensor, codes: torch.Tensor, amp: bool = False,
               compiled: bool = False, batch: int | None = None) -> torch.Tensor:
        """(B, 1, S, S) mesh rendering + (B, 3, S, S) masked target + W+ codes -> (B, 3, S, S) in [-1, 1].

        ``amp``: bfloat16 on CPUs with AVX512-BF16 (1.45x measured here at 128 px, mean change 0.002 of
        the [-1, 1] range, under a quarter of a grey level), float16 on CUDA. ``compiled``: run the
        generator compiled ahead of time (``models.compiled``: 1.9x here, loaded in milliseconds once
        a machine has compiled it) on batches of ``batch`` (default B), padding the last one."""
        n, dev = len(mesh), self.device
        mesh, masked_target, codes = mesh.to(dev), masked_target.to(dev), codes.to(dev)
        fn = self._compiled_synthesis(batch or n, amp) if compiled and not self._compile_failed else None
        if fn is None:
            with autocast(dev, amp):
                out = self._eager_synthesis(mesh, masked_target, codes)
            return out.float().clamp(-1, 1).cpu()
        step = batch or n
        outs = []
        codes = codes.contiguous()
        for lo in range(0, n, step):
            # the compiled code reads its inputs as contiguous, whatever their strides say
            m, t = mesh[lo:lo + step].contiguous(), masked_target[lo:lo + step].contiguous()
            k = len(m)
            if k < step:
                m = torch.cat([m, m.new_zeros((step - k, *m.shape[1:]))])
                t = torch.cat([t, t.new_zeros((step - k, *t.shape[1:]))])
            outs.append(fn(m, t, codes)[:k])
        return torch.cat(outs).float().clamp(-1, 1).cpu()

    def _eager_synthesis(self, mesh: torch.Tensor, masked_target: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        feats = self.generator.guide_encoder(torch.cat([mesh * 2 - 1, masked_target], 1))
        return self.generator.synthesize(feats, codes[None])  # one style for all: folded weights

    def _compiled_synthesis(self, batch: int, amp: bool) -> Callable | None:
        """The compiled generator for this batch and precision, loaded (or compiled) on first use.
        A failed compile (no C++ compiler, say) falls back to eager, with a warning, for the life of
        this model. Threads may ask at once: one loads, the others wait for it."""
        key = (batch, amp)
        if key in self._compiled:
            return self._compiled[key]
        with self._compile_lock:
            if key not in self._compiled and not self._compile_failed:
                from models.compiled import load_compiled

                try:
                    self._compiled[key] = load_compiled(self.generator, batch, amp, self.compile_cache_dir)
                except Exception as e:  # noqa: BLE001 - compilers fail in many ways (toolchain, platform)
                    log.warning("compiling the generator failed, running eager: %s",
                                str(e).splitlines()[0] if str(e) else e)
                    self._compile_failed = True
            return self._compiled.get(key)

    # --- persistence ----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, include_discriminator: bool = True) -> str:
        """Write the checkpoint; returns its version (the content hash)."""
        tensors = {f"syncformer.{k}": v for k, v in self.syncformer.state_dict().items()}
        tensors |= {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        if include_discriminator:
            tensors |= {f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()}
        if self.readout is not None:
            tensors |= {f"readout.{k}": v for k, v in self.readout.state_dict().items()}
        dtype = getattr(torch, self.config.weights_dtype)
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        self.version = save_checkpoint(folder, tensors, self.config.to_dict(), metadata=self.card.__dict__)
        return self.version

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "ReSyncer":
        """Load a checkpoint folder (safetensors only: never unpickles) onto ``device``."""
        tensors, doc, version = load_checkpoint(folder)
        config = ModelConfig.from_dict(doc["config"])
        card = ModelCard(**{k: v for k, v in (doc.get("metadata") or {}).items() if k in ModelCard.__dataclass_fields__})
        model = cls(config, card)
        for name, module in (("syncformer", model.syncformer), ("generator", model.generator),
                             ("discriminator", model.discriminator)):
            part = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            if part or name != "discriminator":
                module.load_state_dict(part, strict=True)
        readout = {k[len("readout."):]: v.float() for k, v in tensors.items() if k.startswith("readout.")}
        if readout:
            model.readout = MotionReadout.from_state(readout)
        model.discriminator_trained = any(k.startswith("discriminator.") for k in tensors)
        model.version = version
        return model.to(device).eval()

    @classmethod
    def new(cls, config_name: str = "cpu", card: ModelCard | None = None) -> "ReSyncer":
        return cls(get_config(config_name), card)


__all__ = ["ReSyncer", "ModelCard"]
