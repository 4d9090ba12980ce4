"""The frame models' device-side normalisation, as the reference did it on the CPU."""
from __future__ import annotations

from typing import Callable

import torch


def image_normalizer(mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, x/255, then (x - mean) / (std + 1e-8)."""

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x - m) / (s + 1e-8)

    return preprocess
