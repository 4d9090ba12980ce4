"""Scaling past one device: several GPUs of one host (--gpus), job-array shards (--shard), and
a Ray cluster (--ray). Every backend hands videos to the single-host pieces (run_on_device,
producer.produce, load_models) and reports through the same Summary and failure log.

--gpus: one spawned worker process per device, each running run_on_device with its own decode
workers. The parent owns the only job queue and gives a worker its next video when the worker
asks for one, so assignment is dynamic, and the parent always knows which videos each worker
holds: a worker that dies cannot take a video with it unnoticed (with a queue shared between
processes, a worker killed between taking a video and reporting it would leave a silent gap).

--shard K/N: a video belongs to shard blake2b(key) mod N, the key being the video path as the
csv writes it (relative to --video_path in folder mode).

--ray: CPU tasks decode one video each with producer.produce and send batches of units to GPU
actors that hold the models; the task assembles the rows and writes the outputs. The driver
keeps the queue, logs failures and counts.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import numpy as np

from .outputs import FailureLog, Summary, write_features
from .producer import Group, Settings, produce
from .progress import VideoProgress

# torch comes in only inside functions: Ray decode tasks import this module on every CPU
# worker of a cluster, where torch would cost seconds and ~300 MB per process for nothing.
if TYPE_CHECKING:
    import torch

    from .pipeline import Job, RunConfig

__all__ = [
    "RayOptions",
    "StartupError",
    "cpu_threads",
    "parse_shard",
    "resolve_gpus",
    "run_multi_device",
    "run_ray",
    "select_shard",
    "shard_key",
    "shard_of",
]

OnFinish = Optional[Callable[["Job", bool], None]]


class StartupError(RuntimeError):
    """The run cannot start: no worker could (each failed before taking a video), or Ray is
    not installed."""


# == --shard K/N ===================================================================================

def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), shards numbered 0..N-1 as SLURM_ARRAY_TASK_ID is with --array=0-(N-1)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard wants K/N (e.g. 3/16), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: K must be 0..N-1 (shards are numbered from 0)")
    return index, count


def shard_of(key: str, count: int) -> int:
    # Python's hash() is salted per process; a digest is the same on every run and machine.
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_key(job: Job, root: Optional[Path] = None) -> str:
    """The csv's video path as written; in folder mode the path below the folder, so nodes that
    mount the corpus at different places still agree."""
    path = Path(job.video_path)
    if root is not None:
        path = path.relative_to(root)
    return path.as_posix()


def select_shard(jobs: Iterable[Job], index: int, count: int,
                 root: Optional[Path] = None) -> list[Job]:
    """The jobs of shard `index` of `count`. Membership depends on the video alone, not on the
    row order or row count, so a csv that is re-sorted or has videos appended leaves every
    earlier video in its shard."""
    return [job for job in jobs if shard_of(shard_key(job, root), count) == index]


# Summary fields the parent counts itself from per-video events (or sets before the run, or
# that are timestamps): never summed from the workers.
_EVENT_COUNTED = frozenset({"videos", "done", "skipped", "failed", "started", "shard"})


def _extras(summary: Summary) -> dict:
    """The Summary fields a worker accumulates (video_seconds, rows, model_seconds...), copied;
    generic so that fields the pipeline adds later are carried too."""
    out = {}
    for f in fields(summary):
        if f.name not in _EVENT_COUNTED:
            value = getattr(summary, f.name)
            out[f.name] = value.copy() if isinstance(value, dict) else value
    return out


def _difference(now: dict, before: dict) -> dict:
    delta = {}
    for name, value in now.items():
        old = before.get(name)
        if isinstance(value, dict):
            old = old or {}
            delta[name] = {k: v - old.get(k, 0) for k, v in value.items() if v != old.get(k, 0)}
        elif isinstance(value, (int, float)):
            delta[name] = value - (old or 0)
    return delta


def _add(summary: Summary, delta: dict) -> None:
    for name, value in delta.items():
        if isinstance(value, dict):
            table = getattr(summary, name)
            for key, amount in value.items():
                table[key] = table.get(key, 0) + amount
        else:
            setattr(summary, name, getattr(summary, name) + value)


def _failure_log_at(path: Path) -> FailureLog:
    log = FailureLog(Path(path).parent)
    log.path = Path(path)
    return log


def _resolve_checkpoints(config: RunConfig) -> None:
    from .models import get_spec
    from .weights import resolve_checkpoint

    # Once, here: N workers fetching the same missing file would write the same .part.
    for name in config.models:
        resolve_checkpoint(get_spec(name).checkpoint, config.weights_dir, config.checkpoint,
                           download=config.download)


class _Progress:
    """The one bar of a run whose videos finish in other processes, in video-seconds: the
    --gpus workers forward each video's begin/reach events (keyed by queue index); Ray's
    decode tasks report only when a video ends."""

    def __init__(self, total: int, enabled: bool, summary: Summary):
        self.summary = summary
        self.bar = VideoProgress(total, enabled)

    def event(self, kind: str, index: int, seconds: Optional[float]) -> None:
        if kind == "begin":
            self.bar.begin(index, seconds)
        else:
            self.bar.reach(index, seconds or 0.0)

    def update(self, index: Optional[int] = None, ok: bool = True,
               seconds: Optional[float] = None) -> None:
        self.bar.end(index, ok, seconds)

    def note(self, text: str) -> None:
        self.bar.note(f"hero-features: {text}")

    def close(self) -> None:
        self.bar.close()


class _ForwardProgress:
    """In a --gpus worker: the pipeline's progress events, sent to the parent's bar. Decoding
    positions are sent at most every 0.2 s per video; begin and end always."""

    def __init__(self, channel: "_Channel", held: dict):
        self.channel, self.held = channel, held
        self._sent: dict[int, float] = {}

    def begin(self, job: Job, duration: Optional[float]) -> None:
        self.channel.send(("progress", "begin", self.held.get(id(job)), duration))

    def reach(self, job: Job, seconds: float) -> None:
        now = time.monotonic()
        if now - self._sent.get(id(job), 0.0) >= 0.2:
            self._sent[id(job)] = now
            self.channel.send(("progress", "reach", self.held.get(id(job)), seconds))

    def end(self, job: Job, ok: bool, seconds: Optional[float] = None) -> None:
        self._sent.pop(id(job), None)  # the parent learns of the end from "finished"


def _fail_job(job: Job, stage: str, error: str, summary: Summary, failures: FailureLog,
              progress: _Progress, on_finish: OnFinish, index: Optional[int] = None) -> None:
    for model in job.outputs:
        failures.record(job.video_path, model, stage, error)
    summary.failed += 1
    if on_finish is not None:
        on_finish(job, False)
    progress.update(index, ok=False)


# == --gpus: one worker process per device =========================================================

def resolve_gpus(text: str, available: Optional[int] = None) -> list[str]:
    """'all' or '0,1,3' -> ['cuda:0', ...]; ValueError names what is wrong."""
    if available is None:
        import torch

        available = torch.cuda.device_count()
    if text.strip() == "all":
        if available < 1:
            raise ValueError("--gpus all: torch sees no CUDA device")
        return [f"cuda:{k}" for k in range(available)]
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus wants 'all' or device numbers like 0,1,3; got {text!r}") \
            from None
    if not ids:
        raise ValueError("--gpus names no device")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text} names a device twice")
    bad = [k for k in ids if not 0 <= k < available]
    if bad:
        raise ValueError(f"--gpus {text}: no CUDA device {', '.join(map(str, bad))} "
                         f"(torch sees {available})")
    return [f"cuda:{k}" for k in ids]


def cpu_threads(devices: Sequence[str]) -> Optional[int]:
    """torch threads of each worker on "cpu": the host's cores split between them, since with
    torch's default (all cores each) the OpenMP pools oversubscribe and every model runs
    several times slower. CPU results depend on the thread count in the last bits."""
    on_cpu = sum(_is_cpu(d) for d in devices)
    if not on_cpu:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // on_cpu)


def _is_cpu(device: str) -> bool:
    return str(device).split(":")[0] == "cpu"


class _Channel:
    """The worker's end of its pipe. The pipeline's writer thread reports finished videos while
    the main thread asks for jobs, and a Connection is not safe for two concurrent senders."""

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()
        self.parent_gone = False

    def send(self, message) -> None:
        with self.lock:
            if self.parent_gone:
                return
            try:
                self.conn.send(message)
            except (OSError, EOFError):  # the parent died: finish what is held, then stop
                self.parent_gone = True

    def request(self):
        """The next (index, job), or None when the queue is empty or the parent is gone."""
        self.send(("next",))
        if self.parent_gone:
            return None
        try:
            return self.conn.recv()
        except (OSError, EOFError):
            self.parent_gone = True
            return None


def _worker_main(slot: int, device: str, config: RunConfig, conn, log_path: Path,
                 cpu_threads: Optional[int]) -> None:
    from .signals import stop_on_signals

    # A SIGTERM to every process (SLURM's scancel) stops this worker as the SIGINT its parent
    # forwards does: what is finished is written, its decode workers and their shared memory
    # are cleaned up.
    with stop_on_signals():
        _device_worker(slot, device, config, conn, log_path, cpu_threads)


def _device_worker(slot: int, device: str, config: RunConfig, conn, log_path: Path,
                   cpu_threads: Optional[int]) -> None:
    import torch

    from .pipeline import run_on_device
    from .weights import WeightsError

    # Its own process group: if this worker dies, the parent kills its decode workers with it;
    # otherwise they would wait forever on a queue whose feeding end they also hold.
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    channel = _Channel(conn)
    summary = Summary()
    held: dict[int, int] = {}  # id(job) -> queue index
    reported = [_extras(summary)]
    taken = 0

    def jobs():
        nonlocal taken
        while True:
            item = channel.request()
            if item is None:
                return
            index, job = item
            taken += 1
            held[id(job)] = index
            yield job

    def on_finish(job: Job, ok: bool) -> None:
        now = _extras(summary)
        delta, reported[0] = _difference(now, reported[0]), now
        channel.send(("finished", held.pop(id(job)), ok, delta))

    try:
        run_on_device(config, torch.device(device), jobs(), summary, _failure_log_at(log_path),
                      progress=False, on_finish=on_finish,
                      progress_sink=_ForwardProgress(channel, held))
    except BaseException as exc:  # told to the parent first, so it can name the cause
        text = f"{type(exc).__name__}: {exc}"
        channel.send(("fatal", isinstance(exc, WeightsError), text) if taken == 0
                     else ("crash", text))
        if isinstance(exc, (WeightsError, KeyboardInterrupt)):
            return
        raise
    channel.send(("exit", _difference(_extras(summary), reported[0])))


@dataclass
class _Worker:
    slot: int
    device: str
    process: object
    conn: object
    held: dict = field(default_factory=dict)  # queue index -> Job, taken and not finished
    took_any: bool = False
    last: Optional[tuple] = None  # its final word: ("exit", ...) | ("fatal", ...) | ("crash", ...)


def _exit_text(code: Optional[int]) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _kill_group(pid: Optional[int], sig: int = signal.SIGKILL) -> None:
    if pid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_multi_device(config: RunConfig, devices: Sequence[str], jobs: Iterable[Job],
                     summary: Summary, failures: FailureLog, progress: Optional[bool] = None,
                     on_finish: OnFinish = None, worker_fn: Callable = _worker_main) -> None:
    """run_on_device on every device at once, videos handed out one at a time from one queue.

    Fills `summary` (done, failed, video_seconds, rows...) and `on_finish(job, ok)` fires once
    per video, in this process, as with run_on_device. The videos a dying worker held are
    logged with stage "worker" and counted as failed; the others carry on with the queue.
    Raises WeightsError / StartupError when no worker could load the models.

    worker_fn: what each worker process runs, with _worker_main's arguments; a module-level
    function (it is sent to spawned processes). Tests pass one that dies holding a video.
    """
    if not devices:
        raise ValueError("run_multi_device needs at least one device")
    _resolve_checkpoints(config)
    queue = deque(enumerate(jobs))
    bar = _Progress(len(queue), config.progress if progress is None else progress, summary)
    ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA state
    workers: list[_Worker] = []
    threads = cpu_threads(devices)
    from .signals import start_resource_tracker

    start_resource_tracker()  # shared with the workers' decode pools: see signals.py
    try:
        for slot, device in enumerate(devices):
            mine, theirs = ctx.Pipe(duplex=True)
            # Not a daemon: daemonic processes may not start their own decode workers.
            process = ctx.Process(target=worker_fn, name=f"hero-features-{device}",
                                  args=(slot, str(device), config, theirs, failures.path,
                                        threads if _is_cpu(device) else None))
            process.start()
            theirs.close()  # so EOF on ours means the worker is gone
            workers.append(_Worker(slot, str(device), process, mine))
        live = list(workers)
        while live:
            wait([w.conn for w in live] + [w.process.sentinel for w in live], timeout=1.0)
            for worker in list(live):
                eof = _pump(worker, queue, summary, bar, on_finish)
                if eof or not worker.process.is_alive():
                    _pump(worker, queue, summary, bar, on_finish)  # what it sent before dying
                    worker.process.join(timeout=10)
                    _retire(worker, summary, failures, bar, on_finish)
                    live.remove(worker)
        if queue:
            _nobody_left(workers, queue, summary, failures, bar, on_finish)
    except BaseException:
        # Ctrl-C reaches only this process (the workers have their own process groups):
        # interrupt them as a terminal would, then make sure nothing is left running.
        running = [w for w in workers if w.process.exitcode is None]
        for w in running:
            _kill_group(w.process.pid, signal.SIGINT)
        for w in running:
            w.process.join(timeout=10)
            _kill_group(w.process.pid)
            w.process.join(timeout=5)
        raise
    finally:
        for w in workers:
            w.conn.close()
        bar.close()


def _pump(worker: _Worker, queue: deque, summary: Summary, bar: _Progress,
          on_finish: OnFinish) -> bool:
    """Handle every message the worker has sent; True once its end is closed."""
    while True:
        try:
            if not worker.conn.poll():
                return False
            message = worker.conn.recv()
        except (EOFError, OSError):
            return True
        kind = message[0]
        if kind == "next":
            item = queue.popleft() if queue else None
            if item is not None:
                worker.held[item[0]] = item[1]  # before sending: it may die holding it
                worker.took_any = True
            try:
                worker.conn.send(item)
            except (OSError, EOFError):
                if item is not None:  # never reached the worker
                    del worker.held[item[0]]
                    queue.appendleft(item)
                return True
        elif kind == "progress":
            _, event, index, seconds = message
            if index in worker.held:
                bar.event(event, index, seconds)
        elif kind == "finished":
            _, index, ok, delta = message
            job = worker.held.pop(index, None)
            _add(summary, delta)
            if job is None:  # not one it was given; nothing to count
                continue
            if ok:
                summary.done += 1
            else:
                summary.failed += 1
            if on_finish is not None:
                on_finish(job, ok)
            bar.update(index, ok, delta.get("video_seconds"))
        else:  # "exit" | "fatal" | "crash"
            worker.last = message
            if kind == "exit":
                _add(summary, message[1])


def _retire(worker: _Worker, summary: Summary, failures: FailureLog, bar: _Progress,
            on_finish: OnFinish) -> None:
    last = worker.last or ("died",)
    code = worker.process.exitcode
    if last[0] == "exit" and code == 0 and not worker.held:
        return
    _kill_group(worker.process.pid)  # its decode workers, if it left any behind
    who = f"worker {worker.slot} ({worker.device})"
    if last[0] == "fatal":
        reason = f"{who} could not start: {last[2]}"
    elif last[0] == "crash":
        reason = f"{who} stopped on {last[1]}"
    elif last[0] == "exit":
        reason = f"{who} ended ({_exit_text(code)}) without reporting every video it took"
    else:
        reason = f"{who} died ({_exit_text(code)})"
    if not worker.held:
        bar.note(reason if last[0] == "fatal" else f"{reason}; it held no video")
        return
    bar.note(f"{reason}; the {len(worker.held)} video(s) it held are logged as failed "
             f"(stage worker) and will be redone by a rerun")
    for index in sorted(worker.held):
        _fail_job(worker.held[index], "worker", f"{reason} while this video was in its hands",
                  summary, failures, bar, on_finish, index)
    worker.held.clear()


def _nobody_left(workers: list[_Worker], queue: deque, summary: Summary, failures: FailureLog,
                 bar: _Progress, on_finish: OnFinish) -> None:
    if not any(w.took_any for w in workers):
        # Nothing was done: a run that could not start, not a run with failed videos.
        fatal = [w.last for w in workers if w.last and w.last[0] == "fatal"]
        if fatal and all(f[1] for f in fatal):
            from .weights import WeightsError

            raise WeightsError(fatal[0][2].split(": ", 1)[-1])
        words = [w.last[-1] if w.last else _exit_text(w.process.exitcode) for w in workers]
        raise StartupError(f"no worker could start: {words[0]}")
    while queue:
        index, job = queue.popleft()
        _fail_job(job, "worker", "not started: every worker process had stopped", summary,
                  failures, bar, on_finish, index)


# == --ray: decode tasks on CPUs, model actors on GPUs ==============================================

@dataclass
class RayOptions:
    address: Optional[str] = None  # None: RAY_ADDRESS or a running local instance, else a new one
    actors: Optional[int] = None  # model actors (default: one per GPU, or one when there are none)
    gpus_per_actor: Optional[float] = None  # default 1 when the cluster has GPUs, else 0
    in_flight: Optional[int] = None  # videos decoding at once (default 2 per cluster CPU)
    max_retries: int = 2  # reruns of a decode task whose process or node died
    calls_per_actor: int = 16  # concurrent forward requests an actor accepts (and may merge)


def _forward_rows(spec, module, units: np.ndarray, device: torch.device,
                  autocast_dtype) -> np.ndarray:
    """One batch through the pipeline's own device_features (bit-equal to the local run)."""
    import torch

    from .pipeline import device_features

    host = torch.from_numpy(units)
    if device.type == "cuda":
        host = host.pin_memory()
    return device_features(spec, module, host, device, autocast_dtype).cpu().numpy()


class _Coalescer:
    """Merges requests of the same model and unit shape that queue up while the device is busy
    into one batch of up to `batch_size`, so short videos still fill batches. The caller that
    finds the device free runs batches until the queue is empty; nobody waits on a timer."""

    def __init__(self, run: Callable[[tuple, np.ndarray], np.ndarray], batch_size: int):
        self.run = run
        self.batch_size = batch_size
        self.cond = threading.Condition()
        self.queue: list[list] = []  # [key, units, result, error, done]
        self.busy = False

    def submit(self, key: tuple, units: np.ndarray) -> np.ndarray:
        request = [key, units, None, None, False]
        with self.cond:
            self.queue.append(request)
            while not request[4]:
                if self.busy:
                    self.cond.wait()
                    continue
                self.busy = True
                batch = self._take()
                self.cond.release()
                try:
                    self._run(batch)
                finally:
                    self.cond.acquire()
                    self.busy = False
                    self.cond.notify_all()
        if request[3] is not None:
            raise request[3]
        return request[2]

    def _take(self) -> list[list]:
        key = self.queue[0][0]
        batch, size = [], 0
        for request in list(self.queue):
            if request[0] == key and (not batch or size + len(request[1]) <= self.batch_size):
                batch.append(request)
                size += len(request[1])
                self.queue.remove(request)
        return batch

    def _run(self, batch: list[list]) -> None:
        try:
            rows = self.run(batch[0][0], np.concatenate([r[1] for r in batch]))
        except BaseException as exc:  # every request of the batch fails, as a batch does locally
            for request in batch:
                request[3], request[4] = exc, True
            return
        offset = 0
        for request in batch:
            request[2], request[4] = rows[offset:offset + len(request[1])], True
            offset += len(request[1])


class _ModelActor:
    """The models of a run on one device (a GPU when Ray gave this actor one)."""

    def __init__(self, config: RunConfig, use_gpu: bool):
        import torch

        from .models import get_spec
        from .pipeline import PRECISIONS, load_models

        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.models = load_models(config, self.device)
        self.specs = {name: get_spec(name) for name in config.models}
        self.autocast_dtype = PRECISIONS[config.precision]
        self.coalescer = _Coalescer(self._run, max(1, config.batch_size))
        self.busy: dict[str, float] = {}  # model -> seconds in its forward, for the summary

    def ready(self) -> str:
        return str(self.device)

    def seconds(self) -> dict:
        return self.busy.copy()

    def _run(self, key: tuple, units: np.ndarray) -> np.ndarray:
        model = key[0]
        started = time.perf_counter()
        rows = _forward_rows(self.specs[model], self.models[model], units, self.device,
                             self.autocast_dtype)
        self.busy[model] = self.busy.get(model, 0.0) + time.perf_counter() - started
        return rows

    def forward(self, model: str, units: np.ndarray) -> np.ndarray:
        return self.coalescer.submit((model, units.shape[1:]), units)


class _StallWatch:
    """--video_timeout for a decode task: ends this process when decoding makes no progress
    for `limit` seconds. A decode stuck inside FFmpeg cannot be interrupted from Python, and a
    dead worker is what Ray reruns and then reports. Time spent waiting for the models is not
    counted."""

    def __init__(self, limit: Optional[float], what: str, on_stall: Optional[Callable] = None):
        self.limit, self.what = limit, what
        self.on_stall = on_stall or self._exit
        self.last = time.monotonic()
        self.waiting = False
        self.stopped = threading.Event()
        if limit:
            threading.Thread(target=self._watch, daemon=True).start()

    def tick(self) -> None:
        self.last = time.monotonic()

    @contextmanager
    def pause(self):
        self.waiting = True
        try:
            yield
        finally:
            self.waiting = False
            self.tick()

    def stop(self) -> None:
        # Ray reuses the worker process for other tasks: the watch must end with this one.
        self.stopped.set()

    def _watch(self) -> None:
        while not self.stopped.wait(min(self.limit / 4, 5.0)):
            if not self.waiting and time.monotonic() - self.last > self.limit:
                self.on_stall()
                return

    def _exit(self) -> None:
        print(f"hero-features: no frame decoded from {self.what} for {self.limit:g} s "
              f"(--video_timeout); ending this Ray worker", file=sys.stderr, flush=True)
        os._exit(87)


def _ray_video(index: int, video_path: str, outputs: dict, groups: Sequence[Group],
               settings: Settings, batch_size: int, actors: list,
               video_timeout: Optional[float] = None, records: Optional[dict] = None,
               produce_fn: Callable = produce) -> dict:
    """One video on a CPU: decode with `produce_fn` (producer.produce), send batches of units
    to the model actors (taking turns), put the rows back in order and write the outputs. Its
    arguments are plain or torch-free types, so unpickling them imports no torch."""
    import ray

    active = [i for i, g in enumerate(groups) if any(m in outputs for m in g.models)]
    batch_size = max(1, batch_size)
    buffers: dict[int, list] = {g: [] for g in active}
    starts = {g: 0 for g in active}
    calls: list[tuple] = []  # (model, first unit index, ObjectRef of its rows)
    outstanding: list = []  # refs of calls not known to be finished
    warnings: list[tuple] = []  # (stage, message): features follow, from a damaged stream
    seconds = 0.0
    turn = index

    def failed(stage: str, error: str) -> dict:
        return {"ok": False, "stage": stage, "error": error}

    def send(group: int) -> None:
        nonlocal turn
        units = np.concatenate(buffers[group])
        buffers[group].clear()
        ref = ray.put(units)  # once, shared by the models of the group
        for model in groups[group].models:
            if model in outputs:
                actor = actors[turn % len(actors)]
                turn += 1
                calls.append((model, starts[group], actor.forward.remote(model, ref)))
                outstanding.append(calls[-1][2])
        starts[group] += len(units)
        # A few batches in flight let decoding overlap the models without piling up units.
        if len(outstanding) > 4:
            with watch.pause():
                _, outstanding[:] = ray.wait(outstanding, num_returns=len(outstanding) - 4,
                                             fetch_local=False)

    watch = _StallWatch(video_timeout, video_path)
    try:
        for message in produce_fn(index, video_path, groups, settings, active,
                                  on_frame=watch.tick):
            watch.tick()
            kind = message[0]
            if kind == "units":
                buffers[message[2]].append(message[3])
                if sum(len(u) for u in buffers[message[2]]) >= batch_size:
                    send(message[2])
            elif kind == "error":
                return failed(message[2], message[3])
            elif kind == "warning":
                warnings.append((message[2], message[3]))
            elif kind == "end":
                seconds = float(message[2])
    finally:
        watch.stop()
    for group in active:
        if buffers[group]:
            send(group)

    tables: dict[str, list] = {}
    for model, start, ref in calls:
        try:
            rows = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised by the model, e.g. out of memory
            return failed("model", f"{model}: {_ray_error_text(exc)}")
        tables.setdefault(model, []).append((start, rows))
    written = {}
    try:
        for model, path in outputs.items():
            parts = sorted(tables.get(model, []), key=lambda part: part[0])
            if not parts:
                return failed("decode", f"{model}: no feature rows (no frames or clips decoded)")
            features = np.concatenate([rows for _, rows in parts])
            write_features(Path(path), features, (records or {}).get(model))
            written[model] = len(features)
    except OSError as exc:
        return failed("write", f"{type(exc).__name__}: {exc}")
    return {"ok": True, "seconds": seconds, "rows": written, "warnings": warnings}


def run_ray(config: RunConfig, jobs: Iterable[Job], summary: Summary, failures: FailureLog,
            options: Optional[RayOptions] = None, progress: Optional[bool] = None,
            on_finish: OnFinish = None, produce_fn: Callable = produce) -> None:
    """Extract `jobs` on a Ray cluster; outputs go to the jobs' paths, which every node must
    see (shared storage). The failure log and the counts are kept here, on the driver.

    A decode task whose worker or node dies is rerun `max_retries` times, then its video is
    logged with stage "ray". Uses the running Ray instance if this process already has one.
    produce_fn: the decode each task runs (producer.produce's arguments), shipped to the
    cluster's workers; tests pass one that kills its worker.
    """
    try:
        import ray
    except ImportError:
        raise StartupError("--ray needs Ray: pip install 'hero-features[ray]'") from None

    from .models import get_spec
    from .pipeline import make_groups
    from .weights import WeightsError

    options = options or RayOptions()
    _resolve_checkpoints(config)  # a missing checkpoint stops the run before any cluster work
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address or None, include_dashboard=False)
    queue = deque(enumerate(jobs))
    bar = _Progress(len(queue), config.progress if progress is None else progress, summary)
    actors: list = []
    in_flight: dict = {}
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        per_actor = options.gpus_per_actor if options.gpus_per_actor is not None else \
            (1.0 if gpus >= 1 else 0.0)
        count = options.actors or (max(1, int(gpus // per_actor)) if per_actor else 1)
        actor_class = ray.remote(_ModelActor).options(
            num_gpus=per_actor, max_concurrency=options.calls_per_actor,
            # A crashed actor comes back; a batch that keeps killing it is given up after
            # two reruns and its videos are logged, the rest go on.
            max_restarts=-1, max_task_retries=2)
        actors = [actor_class.remote(config, per_actor > 0) for _ in range(count)]
        try:
            ray.get([actor.ready.remote() for actor in actors])
        except ray.exceptions.RayActorError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise WeightsError(f"the model actors could not start: {lines[-1].strip()}") \
                from None
        # Bad videos come back as values; an exception here is unexpected (a dead actor, a
        # node lost mid-call), so it is retried like a crash.
        task = ray.remote(_ray_video).options(num_cpus=1, max_retries=options.max_retries,
                                              retry_exceptions=True)
        groups = make_groups([get_spec(name) for name in config.models])
        limit = options.in_flight or max(2, 2 * int(resources.get("CPU", 1)))
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                index, job = queue.popleft()
                outputs = {model: str(path) for model, path in job.outputs.items()}
                in_flight[task.remote(index, str(job.video_path), outputs, groups,
                                      config.settings, config.batch_size, actors,
                                      config.video_timeout, config.records, produce_fn)] = job
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                job = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    result = {"ok": False, "stage": "ray",
                              "error": f"{_ray_error_text(exc)} (after {options.max_retries} "
                                       f"retries)"}
                _record(job, result, summary, failures, bar, on_finish)
        _add(summary, {"model_seconds": _actor_seconds(ray, actors)})
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
        bar.close()
        if started_here:
            ray.shutdown()


def _actor_seconds(ray, actors: list) -> dict:
    total: dict[str, float] = {}
    for busy in ray.get([actor.seconds.remote() for actor in actors]):
        for model, seconds in busy.items():
            total[model] = total.get(model, 0.0) + seconds
    return total


def _ray_error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:  # an exception raised in the task: its own type and message
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _record(job: Job, result: dict, summary: Summary, failures: FailureLog, bar: _Progress,
            on_finish: OnFinish) -> None:
    if not result["ok"]:
        _fail_job(job, result["stage"], result["error"], summary, failures, bar, on_finish)
        return
    summary.done += 1
    summary.video_seconds += result["seconds"]
    if result["warnings"]:
        summary.warned += 1
        for stage, message in result["warnings"]:
            for model in job.outputs:
                failures.warn(job.video_path, model, stage, message)
    for model, rows in result["rows"].items():
        summary.rows[model] = summary.rows.get(model, 0) + rows
    if on_finish is not None:
        on_finish(job, True)
    bar.update(None, True, result["seconds"])
