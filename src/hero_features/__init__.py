"""hero-features: per-clip video features faithful to the HERO reference extractor.

The command line is `hero-features` (cli.py); the Python API (api.py, docs/api.md) is
`hero_features.extract(video, models=[...])` and `hero_features.FeatureExtractor`. Importing
the package is cheap and loads no torch: the API's names are imported on first use.
"""
from __future__ import annotations

from .errors import HeroFeaturesError, UsageError, VideoFailed, WeightsError

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first used
_LAZY = {"extract": "api", "FeatureExtractor": "api", "VideoResult": "assembler",
         "MODEL_IDS": "models"}

__all__ = ["FeatureExtractor", "HeroFeaturesError", "MODEL_IDS", "UsageError", "VideoFailed",
           "VideoResult", "WeightsError", "__version__", "extract"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
