"""Mixed precision where it pays, in one place for training and inference."""

from __future__ import annotations

import torch


def autocast(device: torch.device, enabled: bool):
    """Mixed precision where it pays: float16 on CUDA, bfloat16 on CPUs with native bf16 (else off)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16, enabled=enabled)
    native = hasattr(torch.cpu, "_is_avx512_bf16_supported") and torch.cpu._is_avx512_bf16_supported()
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and native)
