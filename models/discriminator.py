"""StyleGAN2 residual discriminator (after rosinality's), returning its features for feature matching."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.config import DiscriminatorConfig
from models.layers import ConvLayer, EqualLinear, ResBlock


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, stddev_group: int = 4) -> None:
        super().__init__()
        log_size = int(math.log2(cfg.size))
        ch = cfg.channels
        self.stem = ConvLayer(3, ch[cfg.size], 1)
        self.blocks = nn.ModuleList(ResBlock(ch[2 ** i], ch[2 ** (i - 1)]) for i in range(log_size, 2, -1))
        self.stddev_group = stddev_group
        self.final_conv = ConvLayer(ch[4] + 1, ch[4], 3)
        self.final = nn.Sequential(EqualLinear(ch[4] * 16, ch[4], activate=True), EqualLinear(ch[4], 1))
        self.cfg_r1_gamma = cfg.r1_gamma

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        x = torch.cat([x, self._stddev(x)], 1)
        x = self.final_conv(x)
        logit = self.final(x.flatten(1))
        return (logit, feats) if return_features else logit

    def _stddev(self, x: torch.Tensor) -> torch.Tensor:
        """Minibatch standard deviation: lets D see a lack of variety (mode collapse)."""
        b, c, h, w = x.shape
        g = min(b, self.stddev_group)
        while b % g:
            g -= 1
        y = x.view(g, -1, c, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([1, 2, 3])  # (b/g,)
        return y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
