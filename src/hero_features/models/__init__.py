"""The model registry: model id -> ModelSpec. Adding a model is adding one module here."""
from __future__ import annotations

import importlib

from .base import Checkpoint, ModelSpec

# model id -> (module, attribute holding its ModelSpec)
_REGISTRY = {
    "slowfast": ("slowfast", "SPEC"),
    "mil-nce": ("s3d", "SPEC"),
    "resnet": ("resnet", "SPEC"),
    "clip-vit": ("clip", "VIT_SPEC"),
    "clip-rn50x4": ("clip", "RN50X4_SPEC"),
}
MODEL_IDS = tuple(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        module, attr = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_IDS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


__all__ = ["Checkpoint", "ModelSpec", "MODEL_IDS", "get_spec"]
