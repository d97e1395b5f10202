"""StyleGAN2 building blocks (after rosinality's stylegan2-pytorch), in plain PyTorch.

Equalized learning rate (weights scaled at run time by 1/sqrt(fan_in)), modulated convolutions
with weight demodulation, and a leaky ReLU scaled by sqrt(2). Upsampling and downsampling are
bilinear and average pooling instead of the original's custom upfirdn kernels: slower to alias
but portable to any device with no compiled extension.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def scaled_leaky_relu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    return F.leaky_relu(x, slope) * math.sqrt(2)


class EqualLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activate = (1 / math.sqrt(in_dim)) * lr_mul, lr_mul, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return scaled_leaky_relu(out) if self.activate else out


class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale, self.stride, self.padding = 1 / math.sqrt(in_ch * kernel * kernel), stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """Conv (optionally after 2x average-pool downsampling) + scaled leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, downsample: bool = False, activate: bool = True) -> None:
        layers: list[nn.Module] = [nn.AvgPool2d(2)] if downsample else []
        layers.append(EqualConv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=True))
        if activate:
            layers.append(ScaledLeakyReLU())
        super().__init__(*layers)


class ScaledLeakyReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_leaky_relu(x)


class ResBlock(nn.Module):
    """Residual downsampling block of the StyleGAN2 discriminator (and our encoders)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per input channel by the style, then demodulated."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.kernel = in_ch, out_ch, kernel
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.demodulate, self.upsample = demodulate, upsample

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # Modulate the activations and demodulate the outputs rather than building one weight per
        # sample (rosinality's "unfused" path): the same arithmetic, but one ordinary convolution
        # for the whole batch, which is several times faster on CPU.
        s = self.modulation(style)  # (B, in)
        weight = self.scale * self.weight[0]  # (out, in, k, k)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if s.shape[0] == 1:
            # One style for the whole batch (inference: one reference per video): fold modulation
            # and demodulation into the weights, leaving a plain convolution (1.4x faster on CPU).
            weight = weight * s[0][None, :, None, None]
            if self.demodulate:
                weight = weight * torch.rsqrt(weight.pow(2).sum([1, 2, 3]) + 1e-8)[:, None, None, None]
            return F.conv2d(x, weight, padding=self.kernel // 2)
        out = F.conv2d(x * s[:, :, None, None], weight, padding=self.kernel // 2)
        if self.demodulate:
            w2 = weight.pow(2).sum([2, 3])  # (out, in)
            out = out * torch.rsqrt(s.pow(2) @ w2.t() + 1e-8)[:, :, None, None]
        return out


class GuideInjection(nn.Module):
    """Where StyleGAN adds per-pixel noise, ReSyncer adds spatial guidance: encoder features of the
    mesh rendering and the masked target, projected to this layer's channels."""

    def __init__(self, guide_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = EqualConv2d(guide_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return x + self.proj(guide)


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, guide_ch: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel, style_dim, upsample=upsample)
        self.inject = GuideInjection(guide_ch, out_ch)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return scaled_leaky_relu(self.inject(self.conv(x, style), guide) + self.bias)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.upsample = upsample

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + (F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False) if self.upsample else skip)
        return out
