"""What every feature model declares, so the pipeline needs no model-specific code.

A ModelSpec bundles the checkpoint, the decode geometry, the unit of one feature row and
the device-side preprocessing, like torchvision's weight enums bundle weights and transforms.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file under its ORIGINAL name, where it comes from and how to verify it."""

    filename: str
    url: str
    sha256: Optional[str] = None  # None where no hash is published
    # Said instead of "fetch it from <url>" when the file is missing and the download failed
    # or was not allowed: for a file whose published address no longer serves it.
    missing_hint: Optional[str] = None


@dataclass(frozen=True)
class ModelSpec:
    name: str  # model id on the command line
    dim: int  # feature width D of each output row
    unit: str  # "frame": one frame per row (fps = 1/clip_len); "clip": 32-frame clips at 30 fps
    size: int  # short side of the decoded frame, in pixels
    crop: bool  # centre crop size x size after scaling
    checkpoint: Checkpoint
    # build(checkpoint_path, device) -> eval-mode module on `device`, weights loaded strictly.
    # Its forward takes the output of `preprocess` and returns (B, dim) float features.
    build: Callable[[Path, torch.device], nn.Module]
    # uint8 batch already on the device -> model input.
    #   unit "frame": (B, H, W, 3) -> (B, 3, H, W) float
    #   unit "clip":  (B, 32, H, W, 3) -> (B, 3, 32, H, W) float
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    l2_normalize: bool = False  # L2-normalise each row before the float16 cast


def image_normalizer(mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    """Device-side preprocess of the frame models, as the reference did it on the CPU:
    (B, H, W, 3) uint8 -> (B, 3, H, W) float32, x/255, then (x - mean) / (std + 1e-8)."""

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x - m) / (s + 1e-8)

    return preprocess
