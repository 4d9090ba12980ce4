"""What a run is asked to do, importable without torch, PyAV or open_clip: the jobs, the run's
settings, the decode groups, and the checks every front (the CLI, the Python API) applies
before anything is loaded or decoded.

Decode workers, Ray's CPU tasks and `hero-features gather/models/--help` import this module;
none of them may pay for torch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

from .errors import UsageError

# --precision: fp32 is the reference's (CLIP still runs in fp16 on CUDA, as the reference
# did); fp16 / bf16 run every model under autocast, trading parity for speed (see
# docs/benchmarks.md for what each keeps). device_runner maps them to torch dtypes.
PRECISIONS = ("fp32", "fp16", "bf16")
# --scale-on: where the picked frames are scaled and converted to rgb24. "cpu": the decode
# graph in the decode workers (libswscale); "device": the workers send YUV planes and the
# models' device replays libswscale's integer arithmetic (devicescale.py), the same bytes.
SCALE_ON = ("cpu", "device")
DEFAULT_BATCH_SIZE = 32
DEFAULT_DECODE_WORKERS = 2
DEFAULT_VIDEO_TIMEOUT = 300.0  # seconds a video's decoder may go without decoding a frame
MAX_CLIP_LEN = 3600  # seconds per feature row; beyond an hour a row describes nothing


@dataclass
class Job:
    """One video and, per model still to do, where its features go (None: nowhere, the
    features are handed back to the caller, as the Python API does)."""

    video_path: Path
    outputs: dict  # model id -> feature Path (or None)


@dataclass(frozen=True)
class InputGroup:
    """Models fed the same input; everything the decoder needs to know about them."""

    models: tuple[str, ...]
    unit: str  # "frame" | "clip"
    size: int
    crop: bool


@dataclass(frozen=True)
class DecodeSettings:
    clip_len: Fraction
    target_fps: int = 30
    min_num_features: int = 1
    threads: int = 0  # FFmpeg decoder threads per video (0 = FFmpeg's choice)
    scale_on: str = "cpu"  # SCALE_ON


def input_groups(specs: Sequence) -> list[InputGroup]:
    """Models with identical input (unit, size, crop) share one array from the decoder, e.g.
    slowfast + mil-nce; the order follows the first model of each group."""
    groups: dict[tuple, list[str]] = {}
    for spec in specs:
        groups.setdefault((spec.unit, spec.size, spec.crop), []).append(spec.name)
    return [InputGroup(tuple(names), *key) for key, names in groups.items()]


def active_groups(groups: Sequence[InputGroup], models) -> tuple[int, ...]:
    """Indices of the groups that feed any of `models` (a video's models still to do)."""
    return tuple(i for i, g in enumerate(groups) if any(m in models for m in g.models))


def decoder_threads(workers: int, cores: Optional[int] = None) -> int:
    """FFmpeg threads per video: with several decode processes filling the cores, FFmpeg's
    automatic frame threading only adds contention (measured in docs/benchmarks.md), so each
    worker gets a fair share; decoding in the main process (0 workers) leaves it to FFmpeg."""
    if cores is None:  # the CPUs this process may use (a cpuset or taskset can be fewer)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            os.cpu_count() or 1
    return max(1, cores // workers) if workers > 0 else 0


@dataclass
class RunConfig:
    """Everything an extraction needs besides the device and the jobs (picklable, so the
    multi-GPU and Ray backends can hand it to their workers)."""

    models: list
    clip_len: Fraction
    batch_size: int = DEFAULT_BATCH_SIZE
    decode_workers: int = DEFAULT_DECODE_WORKERS  # decode processes (0: decode inline)
    target_fps: int = 30
    min_num_features: int = 1
    weights_dir: Optional[Path] = None
    checkpoint: Optional[Path] = None  # only with a single model
    download: bool = True
    video_timeout: Optional[float] = DEFAULT_VIDEO_TIMEOUT
    output_dir: Path = Path("output")
    progress: bool = True
    precision: str = "fp32"
    scale_on: str = "cpu"  # SCALE_ON
    # Filled in by the command line before the run: model -> the checkpoint file it hashed
    # for the record (so the run loads that very file), and model -> the record itself.
    checkpoints: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)

    @property
    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings(clip_len=self.clip_len, target_fps=self.target_fps,
                              min_num_features=self.min_num_features,
                              threads=decoder_threads(self.decode_workers),
                              scale_on=self.scale_on)


# == checks shared by the command line and the Python API ==========================================

def model_list(values) -> list[str]:
    """Model ids from repeated or comma-separated values ("slowfast,resnet", "clip_vit"),
    in order, each once; UsageError names the unknown ones."""
    from .models import MODEL_IDS

    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values or []:
        for name in value.split(","):
            name = name.strip().replace("_", "-")
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if n not in MODEL_IDS]
    if unknown:
        raise UsageError(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODEL_IDS)}")
    return names


def check_run(models: Sequence[str], clip_len_text, *, batch_size: int, decode_workers: int,
              target_fps: int, min_num_features: int, video_timeout: float,
              precision: str = "fp32", scale_on: str = "cpu") -> Fraction:
    """Every setting no run can use, refused before anything starts (UsageError, in the
    command line's words); returns clip_len as an exact fraction."""
    from .models import get_spec
    from .sampling import ClipSampler, parse_clip_len

    if not models:
        raise UsageError("give at least one --model")
    try:
        clip_len = parse_clip_len(clip_len_text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if batch_size < 1 or decode_workers < 0 or target_fps < 1 or min_num_features < 1:
        raise UsageError("--batch_size, --target_framerate and --min_num_features must be "
                         ">= 1 and --num_decoding_thread >= 0")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")
    if scale_on not in SCALE_ON:
        raise UsageError(f"--scale-on must be one of {', '.join(SCALE_ON)}, got {scale_on!r}")
    specs = [get_spec(m) for m in models]
    _check_numbers(clip_len, clip_len_text, specs, batch_size, target_fps, video_timeout)
    if any(spec.unit == "clip" for spec in specs):
        try:  # the clip models' own constraints, checked before any video is touched
            ClipSampler(clip_len, 30, None, target_fps, min_num_features)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return clip_len


def _check_numbers(clip_len: Fraction, clip_len_text, specs, batch_size: int, target_fps: int,
                   timeout: float) -> None:
    """Values a parser lets through but no run can use."""
    if not math.isfinite(timeout) or timeout < 0:
        raise UsageError(f"--video_timeout must be a number of seconds >= 0 (0 = no limit), "
                         f"got {timeout:g}")
    shortest = Fraction(1, target_fps)
    if not shortest <= clip_len <= MAX_CLIP_LEN:
        raise UsageError(f"--clip_len must be between 1/{target_fps} s (one frame "
                         f"at the {target_fps} fps decode rate) and {MAX_CLIP_LEN} "
                         f"s, got {clip_len_text}")
    # One batch's input buffer alone (each unit at least size x size x 3 bytes) must fit in
    # the machine's memory: otherwise the first batch fails in the allocator.
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    for spec in specs:
        unit = (32 if spec.unit == "clip" else 1) * spec.size * spec.size * 3
        need = batch_size * unit
        if need > memory:
            raise UsageError(f"--batch_size {batch_size} needs at least "
                             f"{need / 2**30:,.0f} GiB for one {spec.name} input batch "
                             f"({batch_size} x {unit / 2**20:.2f} MiB); this machine has "
                             f"{memory / 2**30:.1f} GiB of memory")
