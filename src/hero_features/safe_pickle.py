"""Load weight pickles (Caffe2 `.pkl` and similar) without letting them run code.

Unpickling calls whatever global a file names, so a plain `pickle.load` of a downloaded
checkpoint is arbitrary code execution. A file of numpy arrays in dicts/lists needs only a
handful of globals; every other one is refused before it is even imported.
"""
from __future__ import annotations

import builtins
import codecs
import collections
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

try:  # numpy >= 1.26 (numpy 2 pickles name these modules)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # older numpy only has the pre-2.0 names
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that a file of plain arrays never needs."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes at protocol <= 2 as _codecs.encode(latin-1 text)
        ("_codecs", "encode"): codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Python 2 pickles use these names; the stdlib maps them only in its own find_class
        ("__builtin__", "unicode"): str,
        ("__builtin__", "long"): int,
    }
    # numpy 2 writes numpy._core.*, numpy 1 writes numpy.core.*: same functions
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = _multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _numeric._frombuffer  # protocol 5
    containers = ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray",
                  "str", "int", "float", "complex", "bool")
    for module in ("builtins", "__builtin__"):
        for name in containers:
            allowed[(module, name)] = getattr(builtins, name)
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals of numpy arrays and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}': only numpy arrays, dtypes, "
                "scalars and builtin containers are allowed in a weights file") from None


def safe_load(f: IO[bytes], encoding: str = "latin1") -> Any:
    """pickle.load restricted to array data; latin1 reads Python 2 (Caffe2) pickles too."""
    return RestrictedUnpickler(f, encoding=encoding).load()


def load_caffe2_pickle(path: Path | str) -> dict:
    """Read a Caffe2 checkpoint ({"blobs": {name: ndarray}, ...}) safely."""
    with open(path, "rb") as f:
        try:
            obj = safe_load(f)
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict at the top of the pickle, got {type(obj).__name__}")
    return obj
