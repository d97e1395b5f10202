"""The rewired style-based generator of ReSyncer.

A StyleGAN2 synthesis network whose two input spaces are re-wired:

- noise space <- spatial guidance: a white shaded rendering of the (predicted) 3D mesh plus the
  target crop with its lower face masked, encoded at every resolution by ``GuideEncoder`` and
  added where StyleGAN adds noise (the lowest level also replaces the constant input);
- style space <- appearance: a reference crop of the person, encoded by ``ReferenceEncoder`` into
  W+ codes (one w per modulated layer).

Face swapping is a reference crop of another identity; video-driven lip sync and style transfer
only change the mesh that is rendered. The same weights serve all of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.config import GeneratorConfig
from models.layers import ConvLayer, EqualLinear, ResBlock, StyledConv, ToRGB


def masked_target(crops: torch.Tensor, masks: torch.Tensor, texture: torch.Tensor | None = None,
                  coverage: torch.Tensor | None = None) -> torch.Tensor:
    """What the generator sees of the target: the crop with the region it redraws blanked. For a
    face swap the blank is filled with the other person's face texture moved onto the mesh
    (``models.renderer.warp_texture``) where it covers: the identity arrives as pixels, and the
    generator corrects the mouth, the light and the seams."""
    out = crops * (1 - masks)
    if texture is not None:
        out = out + texture * masks * (coverage if coverage is not None else 1)
    return out


class GuideEncoder(nn.Module):
    """(mesh rendering, masked target) -> feature maps at every resolution from ``size`` down to 4."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        log_size = int(math.log2(cfg.size))
        self.stem = ConvLayer(cfg.guide_channels, cfg.channels[cfg.size], 3)
        self.down = nn.ModuleList(ResBlock(cfg.channels[2 ** i], cfg.channels[2 ** (i - 1)]) for i in range(log_size, 2, -1))

    def forward(self, guide: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.stem(guide)
        feats = {x.shape[-1]: x}
        for block in self.down:
            x = block(x)
            feats[x.shape[-1]] = x
        return feats


class ReferenceEncoder(nn.Module):
    """Reference crop -> W+ (one style vector per modulated layer): identity and appearance."""

    def __init__(self, cfg: GeneratorConfig, n_latent: int) -> None:
        super().__init__()
        log_size = int(math.log2(cfg.size))
        ch = lambda res: max(cfg.encoder_base, cfg.channels[res])  # noqa: E731
        self.stem = ConvLayer(3, ch(cfg.size), 3)
        self.down = nn.ModuleList(ResBlock(ch(2 ** i), ch(2 ** (i - 1))) for i in range(log_size, 2, -1))
        self.to_w = nn.Sequential(EqualLinear(ch(4) * 16, cfg.style_dim, activate=True),
                                  EqualLinear(cfg.style_dim, cfg.style_dim * n_latent))
        self.n_latent, self.style_dim = n_latent, cfg.style_dim

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        x = self.stem(ref)
        for block in self.down:
            x = block(x)
        return self.to_w(x.flatten(1)).view(-1, self.n_latent, self.style_dim)


class Generator(nn.Module):
    """(guide, reference) -> RGB crop in [-1, 1]; ``synthesize`` takes precomputed W+ and guide features."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.log_size = int(math.log2(cfg.size))
        assert 2 ** self.log_size == cfg.size, "crop size must be a power of two"
        ch = cfg.channels
        self.guide_encoder = GuideEncoder(cfg)
        self.conv1 = StyledConv(ch[4], ch[4], 3, cfg.style_dim, ch[4])
        self.to_rgb1 = ToRGB(ch[4], cfg.style_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for i in range(3, self.log_size + 1):
            res, prev = 2 ** i, 2 ** (i - 1)
            self.convs.append(StyledConv(ch[prev], ch[res], 3, cfg.style_dim, ch[res], upsample=True))
            self.convs.append(StyledConv(ch[res], ch[res], 3, cfg.style_dim, ch[res]))
            self.to_rgbs.append(ToRGB(ch[res], cfg.style_dim))
        self.n_latent = self.log_size * 2 - 2
        self.reference_encoder = ReferenceEncoder(cfg, self.n_latent)

    def encode_reference(self, ref: torch.Tensor) -> torch.Tensor:
        """W+ codes (B, n_latent, style_dim) of a reference crop."""
        return self.reference_encoder(ref)

    def synthesize(self, feats: dict[int, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        x = self.conv1(feats[4], w[:, 0], feats[4])  # the 4x4 guide replaces StyleGAN's constant input
        skip = self.to_rgb1(x, w[:, 1])
        i = 1
        for up, conv, to_rgb in zip(self.convs[::2], self.convs[1::2], self.to_rgbs):
            res = x.shape[-1] * 2
            x = up(x, w[:, i], feats[res])
            x = conv(x, w[:, i + 1], feats[res])
            skip = to_rgb(x, w[:, i + 2], skip)
            i += 2
        return skip

    def forward(self, mesh: torch.Tensor, masked_target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """mesh: (B, 1, S, S) in [0, 1]; masked_target, reference: (B, 3, S, S) in [-1, 1]."""
        feats = self.guide_encoder(torch.cat([mesh * 2 - 1, masked_target], 1))
        return self.synthesize(feats, self.encode_reference(reference))
