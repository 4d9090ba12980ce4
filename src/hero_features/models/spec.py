"""What every feature model declares, so the pipeline needs no model-specific code. No torch:
the registry (models/__init__.py) is read by `gather`, `models`, `--help`, decode workers and
Ray's CPU tasks, which must not pay for torch.

A ModelSpec bundles the checkpoint, the decode geometry, the unit of one feature row and the
device-side preprocessing, like torchvision's weight enums bundle weights and transforms; its
`build` and `preprocess` are `Lazy` references into the model's family module, imported only
when a model is built.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file under its ORIGINAL name, where it comes from and how to verify it."""

    filename: str
    url: str
    sha256: Optional[str] = None  # None where no hash is published
    # Said instead of "fetch it from <url>" when the file is missing and the download failed
    # or was not allowed: for a file whose published address no longer serves it.
    missing_hint: Optional[str] = None


@lru_cache(maxsize=None)
def _function(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(f"hero_features.models.{module}"), name)


@dataclass(frozen=True)
class Lazy:
    """`function` of the family module hero_features.models.<module>, imported on first call
    and called with `kwargs` (pairs) added."""

    module: str
    function: str
    kwargs: tuple = ()

    def resolve(self) -> Callable:
        return _function(self.module, self.function)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **dict(self.kwargs), **kwargs)


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
    build: Callable
    # uint8 batch already on the device -> model input.
    #   unit "frame": (B, H, W, 3) -> (B, 3, H, W) float
    #   unit "clip":  (B, 32, H, W, 3) -> (B, 3, 32, H, W) float
    preprocess: Callable
    l2_normalize: bool = False  # L2-normalise each row before the float16 cast
