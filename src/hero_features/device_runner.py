"""Batches through the models on one device: the models loaded, one batch in flight, the time
each model takes.

Every backend runs its batches here (the local run, each --gpus worker, each Ray model
actor), so a batch of the same units gives the same bytes whichever ran it.
"""
from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .batcher import Batch
from .config import RunConfig
from .devicescale import rgb_from_packed
from .errors import UsageError, WeightsError
from .models import get_spec
from .weights import resolve_checkpoint, short_reason

# --precision name -> the autocast dtype (None: no autocast, the reference's fp32).
AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def rgb_units(packed: torch.Tensor, geometry) -> torch.Tensor:
    """Packed YUV units on the device, frames (B, P) or clips (B, T, P), -> the rgb24 units
    the CPU decode graph would have sent, (B, h, w, 3) or (B, T, h, w, 3)."""
    frames = rgb_from_packed(packed.reshape(-1, packed.shape[-1]), geometry)
    return frames.reshape(*packed.shape[:-1], *frames.shape[1:])


def device_features(spec, module, host: torch.Tensor, device: torch.device,
                    autocast_dtype=None, geometry=None) -> torch.Tensor:
    """One batch of uint8 units -> (B, D) float16 features on the device: the scale and
    conversion of packed YUV units (`geometry`, --scale-on device), normalisation, model
    (under autocast for --precision fp16/bf16), L2 where the model asks, the cast the
    reference saved with."""
    with torch.inference_mode():
        units = host.to(device, non_blocking=True)
        if geometry is not None:
            units = rgb_units(units, geometry)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features = module(spec.preprocess(units)).float()
        if spec.l2_normalize:
            features = F.normalize(features, dim=1)
        return features.to(torch.float16)


def pick_device(name: Optional[str]) -> torch.device:
    """--device: cpu, cuda or cuda:K; None picks cuda when torch sees one, else the cpu."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device")
    return device


def load_models(config: RunConfig, device: torch.device) -> dict:
    """Each requested model on `device`, its checkpoint found (or fetched) and strictly loaded."""
    built = {}
    for name in config.models:
        spec = get_spec(name)
        # The file the command line hashed for the records; on another node of a Ray cluster
        # that path may not exist, and the node looks the checkpoint up itself.
        hashed = config.checkpoints.get(name)
        path = hashed if hashed is not None and Path(hashed).is_file() else config.checkpoint
        try:
            path = resolve_checkpoint(spec.checkpoint, config.weights_dir, path,
                                      download=config.download)
            built[name] = spec.build(path, device)
        except WeightsError:
            raise
        except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
            raise WeightsError(f"cannot load the {name} model from {path}: "
                               f"{short_reason(exc)}") from None
    if device.type == "cuda":
        # Parity with the reference's fp32 numbers needs full-precision matmuls and convs.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return built


@dataclass
class Finished:
    """A batch through its model: its rows (numpy float16, padding dropped), or the error
    that lost it, or neither when it was skipped."""

    batch: Batch
    rows: Optional[np.ndarray] = None
    error: Optional[str] = None


@dataclass
class _Launched:
    batch: Batch
    rows: Optional[torch.Tensor]
    error: Optional[str]
    done: Optional[object]  # the CUDA event that marks the copy back
    started: float


class DeviceRunner:
    """Runs fixed-shape batches on one device (on the CPU, unit by unit). `launch` starts a
    batch and returns the one launched before it, collected: on a GPU the copy back and the
    caller's bookkeeping overlap with compute; on the CPU a batch is collected at once."""

    def __init__(self, specs: dict, models: dict, device: torch.device,
                 precision: str = "fp32"):
        self.specs = specs  # model -> ModelSpec
        self.models = models  # model -> module on `device`
        self.device = device
        self.autocast_dtype = AUTOCAST[precision]
        # model -> seconds in its batches; every model from the start, so that another
        # thread may copy it while batches run (no key is ever added).
        self.model_seconds: dict[str, float] = {name: 0.0 for name in models}
        self._in_flight: Optional[_Launched] = None

    @classmethod
    def for_config(cls, config: RunConfig, device: torch.device, models: Optional[dict] = None):
        """The runner of `config`'s models on `device` (loaded here unless given)."""
        specs = {name: get_spec(name) for name in config.models}
        return cls(specs, load_models(config, device) if models is None else models, device,
                   config.precision)

    @property
    def pin_memory(self) -> bool:
        """Whether batch buffers should be pinned (a non-blocking upload needs it)."""
        return self.device.type == "cuda"

    def launch(self, batch: Batch) -> Optional[Finished]:
        started = time.perf_counter()
        rows = done = error = None
        cuda = self.device.type == "cuda"
        try:
            spec, module = self.specs[batch.model], self.models[batch.model]
            if cuda:  # the fixed shape: padding rows included
                features = device_features(spec, module, batch.buffer, self.device,
                                           self.autocast_dtype, batch.geometry)
            else:
                # On the CPU the fixed shape is one unit: batching buys little there and
                # under glibc's malloc costs more (docs/benchmarks.md section 10), and
                # padding would cost whole forward passes.
                features = torch.cat([
                    device_features(spec, module, batch.buffer[i:i + 1], self.device,
                                    self.autocast_dtype, batch.geometry)
                    for i in range(batch.fill)])
            if cuda:
                rows = torch.empty(features.shape, dtype=torch.float16, pin_memory=True)
                rows.copy_(features, non_blocking=True)
                # Also marks the end of the (non-blocking) upload from batch.buffer.
                done = torch.cuda.Event()
                done.record()
            else:
                rows = features
        except Exception as exc:  # e.g. CUDA out of memory: lose these units, not the run
            if cuda:
                # The buffer may still be uploading; wait before it is reused. After a fatal
                # (sticky) CUDA error this raises again, and the run stops with it rather
                # than feeding more batches to a dead device.
                torch.cuda.synchronize(self.device)
            error = f"{batch.model}: {type(exc).__name__}: {exc}"
            rows = None
        launched = _Launched(batch, rows, error, done, started)
        if not cuda:
            return self._collect(launched)
        previous, self._in_flight = self._in_flight, launched
        return self._collect(previous) if previous is not None else None

    def finish(self) -> Optional[Finished]:
        """Collect the batch still in flight, if any."""
        launched, self._in_flight = self._in_flight, None
        return self._collect(launched) if launched is not None else None

    def _collect(self, launched: _Launched) -> Finished:
        if launched.done is not None:
            launched.done.synchronize()
        model = launched.batch.model
        self.model_seconds[model] += time.perf_counter() - launched.started
        rows = None
        if launched.rows is not None:
            rows = launched.rows.numpy()[:launched.batch.fill]
        return Finished(launched.batch, rows, launched.error)
