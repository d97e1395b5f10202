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
from typing import Callable

import torch
from torch import nn

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import ModelConfig, get_config
from models.discriminator import Discriminator
from models.generator import Generator
from models.precision import autocast
from models.syncformer import StyleSyncFormer

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
        self.syncformer = StyleSyncFormer(config.syncformer)
        self.generator = Generator(config.generator)
        self.discriminator = Discriminator(config.discriminator)
        self.version: str | None = None
        self._compiled: Callable | None = None     # torch.compile'd generator, made on first use
        self._compile_failed = False
        self._compile_lock = threading.Lock()      # the first compiled call (the compile) runs alone
        self._compile_warm = False

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
        """(T, audio_dim) features at the video frame rate -> (T, V, 3) displacements.

        Sequences longer than the configured ``max_frames`` run in overlapping windows that are
        cross-faded, so an hour of audio costs linear time and no seam shows at window joins.
        """
        t, limit = len(audio), self.config.syncformer.max_frames
        style = style[None].float().to(self.device)
        audio = audio.float().to(self.device)
        if t <= limit:
            return self.syncformer(audio[None], style)[0].cpu()
        overlap = min(overlap, limit // 4)
        hop = limit - overlap
        out = torch.zeros(t, self.config.syncformer.n_vertices, 3)
        weight = torch.zeros(t)
        ramp = (torch.arange(overlap) + 1.0) / (overlap + 1.0)
        starts = list(range(0, max(t - limit, 0) + hop, hop))
        for k, s in enumerate(starts):
            e = min(s + limit, t)
            pred = self.syncformer(audio[None, s:e], style)[0].cpu()
            w = torch.ones(e - s)
            if k > 0:
                w[:overlap] *= ramp[: e - s]
            if k < len(starts) - 1 and e - s > overlap:
                w[-overlap:] *= ramp.flip(0)
            out[s:e] += w[:, None, None] * pred
            weight[s:e] += w
        return out / weight.clamp_min(1e-6)[:, None, None]

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
        generator through ``torch.compile`` (1.6x here; Inductor caches the compiled code on disk, so
        only a machine's first compile is slow), padding the batch to ``batch`` so that every call
        has the shape that was compiled."""
        n, dev = len(mesh), self.device
        mesh, masked_target = mesh.to(dev), masked_target.to(dev)
        use_compiled = compiled and not self._compile_failed
        fn = self._checked_compiled if use_compiled else self._eager_synthesis
        if use_compiled and batch and n < batch:
            pad = (batch - n, *mesh.shape[1:])
            mesh = torch.cat([mesh, mesh.new_zeros(pad)])
            masked_target = torch.cat([masked_target, masked_target.new_zeros((batch - n, *masked_target.shape[1:]))])
        with autocast(dev, amp):
            out = fn(mesh, masked_target, codes.to(dev))
        return out[:n].float().clamp(-1, 1).cpu()

    def _eager_synthesis(self, mesh: torch.Tensor, masked_target: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        feats = self.generator.guide_encoder(torch.cat([mesh * 2 - 1, masked_target], 1))
        return self.generator.synthesize(feats, codes[None])  # one style for all: folded weights

    def _checked_compiled(self, *args: torch.Tensor) -> torch.Tensor:
        """The compiled generator; a failed compile (no C++ compiler, say) falls back to eager, with
        a warning, for the life of this model. Threads may call it at once: the first call, which
        compiles (Dynamo's tracing is not thread-safe), holds the others back."""
        try:
            if not self._compile_warm:
                with self._compile_lock:
                    if not self._compile_warm:
                        if self._compiled is None:
                            self._compiled = torch.compile(self._eager_synthesis)
                        out = self._compiled(*args)
                        self._compile_warm = True
                        return out
            return self._compiled(*args)
        except Exception as e:  # noqa: BLE001 - torch.compile's failures are many (compiler, platform)
            log.warning("torch.compile of the generator failed, running eager: %s", str(e).splitlines()[0] if str(e) else e)
            self._compile_failed = True
            return self._eager_synthesis(*args)

    # --- persistence ----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, include_discriminator: bool = True) -> str:
        """Write the checkpoint; returns its version (the content hash)."""
        tensors = {f"syncformer.{k}": v for k, v in self.syncformer.state_dict().items()}
        tensors |= {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        if include_discriminator:
            tensors |= {f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()}
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
        model.version = version
        return model.to(device).eval()

    @classmethod
    def new(cls, config_name: str = "cpu", card: ModelCard | None = None) -> "ReSyncer":
        return cls(get_config(config_name), card)


__all__ = ["ReSyncer", "ModelCard"]
