"""Decode workers -> batches across videos -> models on the device -> atomic outputs.

Decoding (producer.py) runs in `num_decoding_thread` worker processes (or inline when 0) and
streams frames/clips as uint8 arrays. The main process batches the units of every video to
`batch_size` per model, normalises them on the device, runs the model, and puts each row back
at its place in its video; a video is written once its decoder has finished and all of its
units have been through the model.
"""
from __future__ import annotations

import errno
import os
import pickle
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .models import ModelSpec, get_spec
from .outputs import FailureLog, Summary, write_features
from .producer import Group, Settings
from .weights import WeightsError, resolve_checkpoint, short_reason
from .workers import DecodePool, inline_messages


MAX_WAITING_VIDEOS = 32  # decoded videos whose outputs wait for a batch to fill
SPARE_SHAPES_PER_MODEL = 4  # unit shapes per model whose batch buffers are kept for reuse
# --precision: fp32 is the reference's (CLIP still runs in fp16 on CUDA, as the reference
# did); fp16 / bf16 run every model under autocast, trading parity for speed (see
# docs/benchmarks.md for what each keeps).
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_VIDEO_TIMEOUT = 300.0  # seconds a video may go without producing any frame


@dataclass
class Job:
    """One video and, per model still to do, where its features go."""

    video_path: Path
    outputs: dict  # model id -> feature Path


@dataclass
class _VideoState:
    job: Job
    decoded: bool = False
    failed: bool = False
    seconds: float = 0.0
    pending: int = 0  # units queued in batchers, not yet through a model
    rows: dict = field(default_factory=dict)  # model -> {unit index: feature row}
    warnings: list = field(default_factory=list)  # (stage, message) of a damaged stream
    next_index: dict = field(default_factory=dict)  # model -> next unit index


@dataclass
class _Batch:
    """A batch being filled: units copied into one reusable (pinned on CUDA) buffer."""

    buffer: torch.Tensor  # (batch_size, *unit shape) uint8
    segments: list = field(default_factory=list)  # (video_id, first unit index, count)
    fill: int = 0


def make_groups(specs: Sequence[ModelSpec]) -> list[Group]:
    groups: dict[tuple, list[str]] = {}
    for spec in specs:
        groups.setdefault((spec.unit, spec.size, spec.crop), []).append(spec.name)
    return [Group(tuple(names), *key) for key, names in groups.items()]


def device_features(spec: ModelSpec, module, host: torch.Tensor, device: torch.device,
                    autocast_dtype=None) -> torch.Tensor:
    """One batch of uint8 units -> (B, D) float16 features on the device: normalisation,
    model (under autocast for --precision fp16/bf16), L2 where the model asks, the cast the
    reference saved with. Every backend runs batches through this one function."""
    with torch.inference_mode():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            x = spec.preprocess(host.to(device, non_blocking=True))
            features = module(x).float()
        if spec.l2_normalize:
            features = F.normalize(features, dim=1)
        return features.to(torch.float16)


def _active_groups(groups: Sequence[Group], job: Job) -> tuple[int, ...]:
    return tuple(i for i, g in enumerate(groups) if any(m in job.outputs for m in g.models))


class Extractor:
    def __init__(self, specs: Sequence[ModelSpec], models: dict, device: torch.device,
                 settings: Settings, batch_size: int, failure_log: FailureLog,
                 summary: Summary, workers: int = 0, progress: bool = True,
                 video_timeout: Optional[float] = DEFAULT_VIDEO_TIMEOUT,
                 on_finish: Optional[Callable[[Job, bool], None]] = None,
                 precision: str = "fp32"):
        # on_finish(job, ok): called once per video when it is written or has failed.
        self.specs = {s.name: s for s in specs}
        self.models = models
        self.device = device
        self.settings = settings
        self.batch_size = max(1, batch_size)
        self.failures = failure_log
        self.summary = summary
        self.workers = workers
        self.video_timeout = video_timeout
        self.on_finish = on_finish
        self.autocast_dtype = PRECISIONS[precision]
        self.model_seconds = summary.model_seconds  # model -> seconds, reported at the end
        self._in_flight = None  # the last launched batch, collected after the next launch
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._fatal: Optional[BaseException] = None
        self.progress = progress
        self.groups = make_groups(specs)
        # (model, unit shape) -> the batch being filled; units of one model are batched
        # across videos, but only with units of the same shape (frames of differently sized
        # videos cannot share a tensor).
        self._open: dict[tuple, _Batch] = {}
        # Buffers whose batch is through the model, by (model, shape): reused, so a long run
        # does not allocate (and pin) a fresh batch-sized buffer every batch.
        self._spare: "OrderedDict[tuple, list[torch.Tensor]]" = OrderedDict()
        self._videos: dict[int, _VideoState] = {}

    # -- batching ---------------------------------------------------------------------------
    def _queue_units(self, video_id: int, model: str, units: np.ndarray) -> None:
        """Copy units into their batch (the array may be a shared-memory view that is only
        valid until the next message), launching every batch that fills up."""
        state = self._videos[video_id]
        start = state.next_index.get(model, 0)
        state.next_index[model] = start + len(units)
        key = (model, units.shape[1:])
        copied = 0
        while copied < len(units):
            batch = self._open.get(key)
            if batch is None:
                batch = self._open[key] = _Batch(self._buffer(key))
            count = min(len(units) - copied, self.batch_size - batch.fill)
            np.copyto(batch.buffer[batch.fill:batch.fill + count].numpy(),
                      units[copied:copied + count])
            batch.segments.append((video_id, start + copied, count))
            state.pending += 1
            batch.fill += count
            copied += count
            if batch.fill == self.batch_size:
                del self._open[key]
                self._forward(model, batch)

    def _buffer(self, key: tuple) -> torch.Tensor:
        spare = self._spare.get(key)
        if spare:
            return spare.pop()
        return torch.empty((self.batch_size, *key[1]), dtype=torch.uint8,
                           pin_memory=self.device.type == "cuda")

    def _give_back(self, key: tuple, buffer: torch.Tensor) -> None:
        self._spare.setdefault(key, []).append(buffer)
        self._spare.move_to_end(key)
        # Per model, so resnet's many frame sizes never evict a clip model's one big buffer;
        # the least recently used sizes go first.
        shapes = [k for k in self._spare if k[0] == key[0]]
        for old in shapes[:-SPARE_SHAPES_PER_MODEL]:
            del self._spare[old]

    def _flush(self) -> None:
        for key in list(self._open):
            self._forward(key[0], self._open.pop(key))
        if self._in_flight is not None:
            launched, self._in_flight = self._in_flight, None
            self._collect(launched)

    @torch.inference_mode()
    def _forward(self, model: str, batch: _Batch) -> None:
        """Launch one batch; its rows are collected after the NEXT batch is launched, so on a
        GPU the copy back and the bookkeeping overlap with compute."""
        spec = self.specs[model]
        started = time.perf_counter()
        rows = done = None
        if any(not self._videos[v].failed for v, _, _ in batch.segments):
            cuda = self.device.type == "cuda"
            try:
                features = device_features(spec, self.models[model],
                                           batch.buffer[:batch.fill], self.device,
                                           self.autocast_dtype)
                if cuda:
                    rows = torch.empty(features.shape, dtype=torch.float16, pin_memory=True)
                    rows.copy_(features, non_blocking=True)
                    # Also marks the end of the (non-blocking) upload from batch.buffer.
                    done = torch.cuda.Event()
                    done.record()
                else:
                    rows = features
            except Exception as exc:  # e.g. CUDA out of memory: lose these videos, not the run
                if cuda:
                    # The buffer may still be uploading; wait before it is reused. After a
                    # fatal (sticky) CUDA error this raises again, and the run stops with it
                    # rather than feeding more batches to a dead device.
                    torch.cuda.synchronize(self.device)
                for video_id in {v for v, _, _ in batch.segments}:
                    self._fail(video_id, "model", f"{model}: {type(exc).__name__}: {exc}")
                rows = None
        previous, self._in_flight = self._in_flight, (model, batch, rows, done, started)
        if previous is not None:
            self._collect(previous)
        if self.device.type != "cuda":
            self._collect(self._in_flight)
            self._in_flight = None

    def _collect(self, launched) -> None:
        model, batch, rows, done, started = launched
        if done is not None:
            done.synchronize()
        self.model_seconds[model] = self.model_seconds.get(model, 0.0) + \
            time.perf_counter() - started
        if rows is not None:
            rows = rows.numpy()
            offset = 0
            for video_id, start, count in batch.segments:
                state = self._videos[video_id]
                if not state.failed:
                    table = state.rows.setdefault(model, {})
                    for i in range(count):
                        table[start + i] = rows[offset + i]
                offset += count
        self._give_back((model, tuple(batch.buffer.shape[1:])), batch.buffer)
        for video_id, _, _ in batch.segments:
            self._videos[video_id].pending -= 1
            self._maybe_finish(video_id)

    # -- per-video bookkeeping ----------------------------------------------------------------
    def _fail(self, video_id: int, stage: str, error: str) -> None:
        state = self._videos[video_id]
        if state.failed:
            return
        state.failed = True
        for model in state.job.outputs:
            self.failures.record(state.job.video_path, model, stage, error)

    def _maybe_finish(self, video_id: int) -> None:
        state = self._videos.get(video_id)
        if state is None or not state.decoded or state.pending:
            return
        del self._videos[video_id]
        if state.failed:
            self._finished(state, False)
        else:  # fsync'd writes run on a background thread so the device keeps working
            self._writer.submit(self._write_and_report, state)

    def _write_and_report(self, state: _VideoState) -> None:
        try:
            ok = self._write(state)
            if ok and state.warnings:  # logged once the features exist, never for a failure
                for stage, text in state.warnings:
                    for model in state.job.outputs:
                        self.failures.warn(state.job.video_path, model, stage, text)
                with self._lock:
                    self.summary.warned += 1
        except OSError as exc:  # disk full / read-only: nothing else can land, stop the run
            self._fatal = exc
            ok = False
        self._finished(state, ok)

    def _finished(self, state: _VideoState, ok: bool) -> None:
        with self._lock:
            if ok:
                self.summary.done += 1
                self.summary.video_seconds += state.seconds
            else:
                self.summary.failed += 1
            if self.on_finish is not None:
                self.on_finish(state.job, ok)
            self._bar.update(1)
            elapsed = max(self._bar.format_dict["elapsed"], 1e-9)
            self._bar.set_postfix_str(f"{self.summary.video_seconds / elapsed:.1f} video-s/s, "
                                      f"{self.summary.failed} failed")

    def _write(self, state: _VideoState) -> bool:
        """Write every model's file of one video; False (and logged) if it cannot be done."""
        job = state.job
        try:
            for model, path in job.outputs.items():
                table = state.rows.get(model, {})
                if not table:
                    raise ValueError(f"{model}: no feature rows (no frames or clips decoded)")
                features = np.stack([table[i] for i in range(len(table))])
                write_features(path, features)
                with self._lock:
                    self.summary.rows[model] = self.summary.rows.get(model, 0) + len(features)
        except OSError as exc:
            for model in job.outputs:
                self.failures.record(job.video_path, model, "write", f"{type(exc).__name__}: {exc}")
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
                raise
            return False
        except ValueError as exc:
            for model in job.outputs:
                self.failures.record(job.video_path, model, "decode", str(exc))
            return False
        return True

    # -- main loop -------------------------------------------------------------------------
    def _register(self, jobs: Iterable[Job]) -> Iterator[tuple]:
        """Hand jobs to the decoders lazily, so a worker process never runs ahead."""
        for video_id, job in enumerate(jobs):
            self._videos[video_id] = _VideoState(job)
            yield video_id, str(job.video_path), _active_groups(self.groups, job)

    def run(self, jobs: Iterable[Job], total: Optional[int] = None) -> None:
        if total is None and hasattr(jobs, "__len__"):
            total = len(jobs)
        self._bar = tqdm(total=total, unit="video", disable=not self.progress,
                         dynamic_ncols=True)
        workers = self.workers if total is None else min(self.workers, total)
        pool = DecodePool(workers, self.groups, self.settings, self.video_timeout) \
            if workers > 0 else None
        if pool is not None and pool.transport_note:
            tqdm.write(f"note: decoded frames go through pipes, not shared memory: "
                       f"{pool.transport_note}", file=sys.stderr)
        messages = pool.messages(self._register(jobs)) if pool else \
            inline_messages(self._register(jobs), self.groups, self.settings)
        try:
            for message in messages:
                if self._fatal is not None:
                    raise self._fatal
                kind, video_id = message[0], message[1]
                state = self._videos.get(video_id)
                if state is None:
                    continue
                if kind == "units":
                    if not state.failed:
                        for model in self.groups[message[2]].models:
                            if model in state.job.outputs:
                                self._queue_units(video_id, model, message[3])
                elif kind == "error":
                    self._fail(video_id, message[2], message[3])
                elif kind == "warning":
                    state.warnings.append((message[2], message[3]))
                elif kind == "end":
                    state.seconds = float(message[2])
                elif kind == "done":
                    state.decoded = True
                    self._maybe_finish(video_id)
                    # Videos of rare frame sizes must not wait for a full batch forever.
                    if sum(v.decoded for v in self._videos.values()) > MAX_WAITING_VIDEOS:
                        self._flush()
            self._flush()
        finally:
            if pool is not None:
                pool.close()
            self._writer.shutdown(wait=True)
            self._bar.close()
        if self._fatal is not None:
            raise self._fatal


@dataclass
class RunConfig:
    """Everything an extraction needs besides the device and the jobs (picklable, so the
    multi-GPU and Ray backends can hand it to their workers)."""

    models: list
    clip_len: Fraction
    batch_size: int = 32
    workers: int = 2
    target_fps: int = 30
    min_num_features: int = 1
    weights_dir: Optional[Path] = None
    checkpoint: Optional[Path] = None  # only with a single model
    download: bool = True
    video_timeout: Optional[float] = DEFAULT_VIDEO_TIMEOUT
    output_dir: Path = Path("output")
    progress: bool = True
    precision: str = "fp32"

    @property
    def settings(self) -> Settings:
        return Settings(clip_len=self.clip_len, target_fps=self.target_fps,
                        min_num_features=self.min_num_features,
                        threads=decoder_threads(self.workers))


def decoder_threads(workers: int, cores: int | None = None) -> int:
    """FFmpeg threads per video: with several decode processes filling the cores, FFmpeg's
    automatic frame threading only adds contention (measured in docs/benchmarks.md), so each
    worker gets a fair share; decoding in the main process (0 workers) leaves it to FFmpeg."""
    if cores is None:  # the CPUs this process may use (a cpuset or taskset can be fewer)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            os.cpu_count() or 1
    return max(1, cores // workers) if workers > 0 else 0


def load_models(config: RunConfig, device: torch.device) -> dict:
    """Each requested model on `device`, its checkpoint found (or fetched) and strictly loaded."""
    built = {}
    for name in config.models:
        spec = get_spec(name)
        path = config.checkpoint
        try:
            path = resolve_checkpoint(spec.checkpoint, config.weights_dir, config.checkpoint,
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


def run_on_device(config: RunConfig, device: torch.device, jobs: Iterable[Job],
                  summary: Summary, failures: FailureLog, progress: Optional[bool] = None,
                  on_finish: Optional[Callable[[Job, bool], None]] = None,
                  total: Optional[int] = None) -> None:
    """The single-host pipeline on one device: the unit every backend reuses."""
    specs = [get_spec(name) for name in config.models]
    extractor = Extractor(specs, load_models(config, device), device, config.settings,
                          config.batch_size, failures, summary, workers=config.workers,
                          progress=config.progress if progress is None else progress,
                          video_timeout=config.video_timeout, on_finish=on_finish,
                          precision=config.precision)
    extractor.run(jobs, total=total)
