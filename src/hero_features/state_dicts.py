"""Checkpoint files into models, as data only: `read_state_dict` is the one reader of torch
checkpoint files (the Caffe2 pickle is safe_pickle.py's), `load_state_dict_strict` the one
strict loader every model uses.

Neither runs pickled Python: torch files are read with `weights_only=True`, TorchScript
archives (OpenAI's CLIP files) with `torch.jit.load`, which only interprets TorchScript.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .weights import CheckpointMismatch, short_reason

# Keys under which training scripts nest the weights: torchvision-style {"state_dict": ...},
# PySlowFast's {"model_state": ..., "optimizer_state": ..., "epoch": ...}.
WRAPPERS = ("state_dict", "model_state")


class RefusedPickle(ValueError, pickle.UnpicklingError):
    """A checkpoint whose pickle names globals a file of tensors never needs: refused, never
    run. A ValueError, as every other wrong file is, and an UnpicklingError, as torch's own
    refusal is."""


def is_torchscript(path: Path) -> bool:
    # torch.save archives hold `<name>/data.pkl` only; torch.jit.save adds code and constants.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        inner = [n.split("/", 1)[-1] for n in z.namelist()]
    return "constants.pkl" in inner or any(n.startswith("code/") for n in inner)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch checkpoint file by name, on the CPU: a plain or wrapped state
    dict (torch.save), or a TorchScript archive's state_dict(). ValueError for anything else,
    a pickle that names other globals above all (it is never run)."""
    path = Path(path)
    if is_torchscript(path):
        with warnings.catch_warnings():
            # TorchScript is deprecated, but it is the format OpenAI published CLIP in.
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's message suggests weights_only=False, which is exactly what must not
            # happen; the line naming the refused global is the one that matters.
            raise RefusedPickle(f"{path}: not a plain state dict nor a TorchScript archive; "
                                f"refusing to unpickle arbitrary objects "
                                f"({short_reason(exc)})") from None
        for key in WRAPPERS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return dict(state)


def is_bn_counter(key: str) -> bool:
    """BatchNorm's `num_batches_tracked`: older PyTorch did not save it and eval never reads
    it, so a checkpoint may lack it."""
    return key.endswith("num_batches_tracked")


def list_names(names: Sequence[str], limit: int = 20) -> str:
    """`names` comma-separated, cut after `limit`: a wrong file can differ in every key."""
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _shape(value) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str, *,
                           ignore_prefixes: Iterable[str] = (),
                           optional: Callable[[str], bool] = lambda key: False,
                           max_listed: int = 20) -> None:
    """Load `state` into `model`, refusing any missing, unexpected or misshapen key by name.

    `what` names the checkpoint in the error (e.g. "SlowFast R50 checkpoint PATH");
    `ignore_prefixes`: checkpoint keys deliberately unused (e.g. a text tower);
    `optional(key)`: model keys a checkpoint may lack, left as the model has them;
    `max_listed`: names listed per problem.
    Raises CheckpointMismatch (a WeightsError and a ValueError).
    """
    ignore_prefixes = tuple(ignore_prefixes)
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not optional(k))
    unexpected = sorted(k for k in state if k not in expected)
    misshapen = [f"{k} checkpoint {_shape(state[k])} != model {tuple(expected[k].shape)}"
                 for k in sorted(state.keys() & expected.keys())
                 if _shape(state[k]) != tuple(expected[k].shape)]
    problems = [f"{label}: {list_names(names, max_listed)}" for label, names in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatch", misshapen)) if names]
    if problems:
        raise CheckpointMismatch(f"{what} does not fit the model: " + "; ".join(problems))
    # Everything left out is optional, so strict=False only lets those keep their values.
    model.load_state_dict(state, strict=False)
