"""Losses of the generator and discriminator (DESIGN section 2.3).

Mouth-weighted L1 (the mouth is where lip sync is judged), multi-scale SSIM (structure: teeth and
lip edges rather than average colour, against the soft mouths of plain L1 training), the
non-saturating adversarial loss with R1 on real images, and feature matching on the
discriminator's features. A perceptual (VGG) loss exists only when a local weights file is given:
nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def weighted_l1(fake: torch.Tensor, real: torch.Tensor, mouth: torch.Tensor, mouth_weight: float = 5.0) -> torch.Tensor:
    """L1 over the crop, ``mouth_weight`` times heavier where the soft mouth mask is 1."""
    w = 1 + (mouth_weight - 1) * mouth
    return (w * (fake - real).abs()).sum() / (w.sum() * fake.shape[1])


def _gaussian(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    w = win.expand(c, 1, -1, -1)
    pad = win.shape[-1] // 2
    mu_x, mu_y = F.conv2d(x, w, padding=pad, groups=c), F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return (lum * cs).mean([1, 2, 3]), cs.mean([1, 2, 3])


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int | None = None) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of images in [0, 1]; fewer scales for small crops."""
    scales = scales or min(5, max(1, int(torch.log2(torch.tensor(min(x.shape[-2:]) / 16.0)).item()) + 1))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=x.device)
    weights = weights / weights.sum()
    win = _gaussian(device=x.device)
    values = []
    for i in range(scales):
        ssim, cs = _ssim_parts(x, y, win)
        values.append(ssim if i == scales - 1 else cs)
        if i < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, 1).clamp_min(1e-6)
    return torch.prod(stacked ** weights, 1)


def ms_ssim_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM of images in [-1, 1]."""
    return (1 - ms_ssim((fake + 1) / 2, (real + 1) / 2)).mean()


def generator_adversarial(fake_logit: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logit).mean()


def discriminator_adversarial(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()


def r1_penalty(real_logit: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Gradient penalty on real images; ``real`` must require grad."""
    (grad,) = torch.autograd.grad(real_logit.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def feature_matching(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(fake_feats, real_feats)) / max(len(fake_feats), 1)


class VGGPerceptual(nn.Module):
    """VGG16 feature distance, with weights only from a local safetensors file (never downloaded)."""

    LAYERS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        from safetensors.torch import load_file
        from torchvision.models import vgg16

        features = vgg16(weights=None).features[: self.LAYERS[-1] + 1]
        state = load_file(weights_path)
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.") or k[0].isdigit()}
        features.load_state_dict({k: v for k, v in state.items() if k.split(".")[0].isdigit() and int(k.split(".")[0]) <= self.LAYERS[-1]})
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x, y = ((fake + 1) / 2 - self.mean) / self.std, ((real + 1) / 2 - self.mean) / self.std
        loss = torch.zeros((), device=fake.device)
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in self.LAYERS:
                loss = loss + F.l1_loss(x, y)
        return loss
