"""Style-SyncFormer: audio features -> per-frame 3D mouth dynamics, in a speaker's style.

A transformer encoder reads the audio tokens (one per video frame); a decoder turns them into
displacements of the Face Mesh template, with a style code injected into every decoder layer by
adaptive layer norm. The style code is encoded from a window of the speaker's own displacements,
so the same audio spoken "in the style of" another speaker uses that speaker's reference motion.
Displacements, style code and audio are separate inputs: video-driven lip sync and style transfer
rewire them without another network.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from models.config import SyncFormerConfig


def sinusoidal(n: int, dim: int, device=None) -> torch.Tensor:
    """(n, dim) sinusoidal positional encoding over frame indices."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention block over audio tokens."""

    def __init__(self, dim: int, heads: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = FeedForward(dim, mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        return x + self.drop(self.ff(self.norm2(x)))


class AdaptiveLayerNorm(nn.Module):
    """Layer norm whose scale and shift come from the style code."""

    def __init__(self, dim: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.to_scale_shift = nn.Linear(style_dim, dim * 2)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(style)[:, None].chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class DecoderLayer(nn.Module):
    """Self-attention over frames and cross-attention to the audio memory, styled by AdaLN."""

    def __init__(self, dim: int, heads: int, mult: int, dropout: float, style_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (AdaptiveLayerNorm(dim, style_dim) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = FeedForward(dim, mult, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, style: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x, style)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        h = self.norm2(x, style)
        x = x + self.drop(self.cross_attn(h, memory, memory, key_padding_mask=pad, need_weights=False)[0])
        return x + self.drop(self.ff(self.norm3(x, style)))


class StyleEncoder(nn.Module):
    """A window of reference displacements -> one style code (how this speaker moves)."""

    def __init__(self, cfg: SyncFormerConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.n_vertices * 3, cfg.d_model)
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(1))
        self.out = nn.Linear(cfg.d_model, cfg.style_dim)

    def forward(self, ref_disp: torch.Tensor) -> torch.Tensor:
        b, t = ref_disp.shape[:2]
        x = self.proj(ref_disp.reshape(b, t, -1)) + sinusoidal(t, self.proj.out_features, ref_disp.device)
        for layer in self.layers:
            x = layer(x)
        return self.out(x.mean(1))


class StyleSyncFormer(nn.Module):
    """(audio features, style code) -> displacements (B, T, V, 3) in template units (eye distances)."""

    def __init__(self, cfg: SyncFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_in = nn.Sequential(nn.Linear(self.token_dim, cfg.d_model), nn.LayerNorm(cfg.d_model))
        self.encoder = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.encoder_layers))
        self.query = nn.Linear(cfg.d_model, cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg.d_model, cfg.heads, cfg.ff_mult, cfg.dropout, cfg.style_dim)
                                     for _ in range(cfg.decoder_layers))
        self.out_norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_vertices * 3)
        nn.init.zeros_(self.head.weight)  # start from the template: zero displacement
        nn.init.zeros_(self.head.bias)
        self.style_encoder = StyleEncoder(cfg)
        # Displacements are tiny (hundredths of an eye distance); the network works on standardised ones.
        self.register_buffer("disp_mean", torch.zeros(cfg.n_vertices * 3))
        self.register_buffer("disp_std", torch.ones(cfg.n_vertices * 3))

    @property
    def token_dim(self) -> int:
        """Width of one audio token: the extractor's width times the feature frames read per video frame."""
        return self.cfg.audio_dim * len(self.cfg.audio_offsets)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.disp_mean.copy_(mean.reshape(-1))
        self.disp_std.copy_(std.reshape(-1).clamp_min(1e-4))

    def normalize(self, disp: torch.Tensor) -> torch.Tensor:
        b, t = disp.shape[:2]
        return ((disp.reshape(b, t, -1) - self.disp_mean) / self.disp_std).reshape(disp.shape)

    def style(self, ref_disp: torch.Tensor) -> torch.Tensor:
        """Style code from reference displacements (B, Tr, V, 3)."""
        return self.style_encoder(self.normalize(ref_disp))

    def forward(self, audio: torch.Tensor, style: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """audio: (B, T, token_dim) tokens at the video frame rate (``frame_tokens``); style: (B, style_dim);
        pad: (B, T) True where a frame is padding."""
        b, t, _ = audio.shape
        pe = sinusoidal(t, self.cfg.d_model, audio.device)
        x = self.audio_in(audio) + pe
        for layer in self.encoder:
            x = layer(x, pad)
        memory = x
        y = self.query(memory) + pe
        for layer in self.decoder:
            y = layer(y, memory, style, pad)
        out = self.head(self.out_norm(y))
        out = out * self.disp_std + self.disp_mean
        return out.reshape(b, t, self.cfg.n_vertices, 3)


class SyncFormerEnsemble(nn.Module):
    """``cfg.members`` Style-SyncFormers trained apart, whose displacements are averaged.

    On 7.2 minutes of footage one Style-SyncFormer overfits after a few hundred steps, and members
    trained with other seeds err in different places: on the base's held-out speakers three of them
    averaged read the mouth opening better than any one (README, quality). Each member keeps its own
    style encoder and normalisation; the style code is theirs side by side, (B, members * style_dim).
    It trains as one module too (a speaker fine-tune moves all members on their mean's loss)."""

    def __init__(self, cfg: SyncFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        member = replace(cfg, members=1)
        self.members = nn.ModuleList(StyleSyncFormer(member) for _ in range(cfg.members))

    @property
    def token_dim(self) -> int:
        return self.members[0].token_dim

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        for m in self.members:
            m.set_normalization(mean, std)

    def style(self, ref_disp: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.style(ref_disp) for m in self.members], -1)

    def forward(self, audio: torch.Tensor, style: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        codes = style.chunk(len(self.members), -1)
        return torch.stack([m(audio, c, pad) for m, c in zip(self.members, codes)]).mean(0)


def build_syncformer(cfg: SyncFormerConfig) -> StyleSyncFormer | SyncFormerEnsemble:
    """One Style-SyncFormer, or the averaged ensemble when the config names several members."""
    return SyncFormerEnsemble(cfg) if cfg.members > 1 else StyleSyncFormer(cfg)


def vertex_loss(pred: torch.Tensor, target: torch.Tensor, lip_index: torch.Tensor, lip_weight: float,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared vertex error, lips weighted ``lip_weight`` times more. (B, T, V, 3) inputs."""
    w = torch.ones(pred.shape[2], device=pred.device)
    w[lip_index] = lip_weight
    err = ((pred - target) ** 2).sum(-1) * w  # (B, T, V)
    if mask is not None:
        err = err * mask[..., None]
        return err.sum() / (mask.sum() * w.sum()).clamp_min(1)
    return err.sum() / (err.shape[0] * err.shape[1] * w.sum())


def velocity_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frame-to-frame motion must match: keeps the mouth from jittering or lagging."""
    dp, dt = pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1]
    err = ((dp - dt) ** 2).sum(-1).mean(-1)  # (B, T-1)
    if mask is not None:
        m = mask[:, 1:] * mask[:, :-1]
        return (err * m).sum() / m.sum().clamp_min(1)
    return err.mean()


def opening_loss(pred: torch.Tensor, target: torch.Tensor, mouth: tuple[int, int],
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - concordance correlation of the inner-lip gap's vertical motion, per window: an L2 loss
    alone lets the predicted mouth regress to the mean (it follows the speech at a fraction of the
    real amplitude); concordance asks for the timing and the amplitude. (B, T, V, 3) inputs."""
    gp = pred[..., mouth[0], 1] - pred[..., mouth[1], 1]   # (B, T) in the canonical frame, y down the face
    gt = target[..., mouth[0], 1] - target[..., mouth[1], 1]
    m = torch.ones_like(gp) if mask is None else mask
    n = m.sum(1).clamp_min(1)
    mp, mt = (gp * m).sum(1) / n, (gt * m).sum(1) / n
    vp, vt = (((gp - mp[:, None]) ** 2) * m).sum(1) / n, (((gt - mt[:, None]) ** 2) * m).sum(1) / n
    cov = ((gp - mp[:, None]) * (gt - mt[:, None]) * m).sum(1) / n
    ccc = 2 * cov / (vp + vt + (mp - mt) ** 2).clamp_min(1e-8)
    return (1 - ccc).mean()


__all__ = ["StyleSyncFormer", "SyncFormerEnsemble", "build_syncformer", "vertex_loss", "velocity_loss", "opening_loss"]
