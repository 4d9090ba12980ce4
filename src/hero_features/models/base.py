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
