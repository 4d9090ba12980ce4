"""--gpus: one spawned worker process per device, each running the local core
(pipeline.results) with its own decode workers and writing its videos' outputs.

The parent owns the only job queue and gives a worker its next video when the worker asks
for one, so assignment is dynamic, and the parent always knows which videos each worker
holds: a worker that dies cannot take a video with it unnoticed (with a queue shared between
processes, a worker killed between taking a video and reporting it would leave a silent
gap). Workers send back each finished video's VideoResult (without its features) and their
progress; the parent's one Reporter logs, counts and draws them.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

from .assembler import VideoResult
from .config import Job, RunConfig
from .errors import StartupError, WeightsError
from .outputs import FailureLog, Summary
from .progress import VideoProgress
from .reporter import OnFinish, Reporter
from .signals import exit_text, start_resource_tracker
from .weights import resolve_checkpoints


# == what a worker tells the parent ================================================================

class _Ask(NamedTuple):
    """The next (queue index, Job), please; the parent answers with one, or None."""


class _Progress(NamedTuple):
    event: str  # "begin" (seconds: the duration) | "reach" (seconds decoded)
    index: int
    seconds: Optional[float]


class _Finished(NamedTuple):
    index: int
    result: VideoResult  # without its features: they are on the disk
    model_seconds: dict  # the worker's model time so far


class _Exit(NamedTuple):  # the queue is empty and every video it took is reported
    model_seconds: dict


class _CouldNotStart(NamedTuple):  # failed before it took a video
    weights: bool  # because of a checkpoint (WeightsError)
    text: str


class _Crashed(NamedTuple):  # failed holding videos
    text: str


# == the parent ====================================================================================

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


@dataclass
class _DeviceWorker:
    """The parent's side of one device worker process."""

    rank: int  # its place in the device list
    device: str
    process: object
    conn: object
    held: dict = field(default_factory=dict)  # queue index -> Job, taken and not finished
    took_any: bool = False
    model_seconds: dict = field(default_factory=dict)  # the latest it reported
    last: Optional[tuple] = None  # its final word: _Exit | _CouldNotStart | _Crashed


def _kill_group(pid: Optional[int], sig: int = signal.SIGKILL) -> None:
    if pid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_multi_device(config: RunConfig, devices: Sequence[str], jobs: Iterable[Job],
                     summary: Summary, failures: FailureLog, progress: Optional[bool] = None,
                     on_finish: OnFinish = None, worker_fn: Optional[Callable] = None) -> None:
    """The local core on every device at once, videos handed out one at a time from one queue.

    Fills `summary` (done, failed, video_seconds, rows...) and `on_finish(job, ok)` fires once
    per video, in this process, as with pipeline.run_on_device. The videos a dying worker
    held are logged with stage "worker" and counted as failed; the others carry on with the
    queue. Raises WeightsError / StartupError when no worker could load the models.

    worker_fn: what each worker process runs, with _worker_main's arguments; a module-level
    function (it is sent to spawned processes). Tests pass one that dies holding a video.
    """
    if not devices:
        raise ValueError("run_multi_device needs at least one device")
    # Once, here: N workers fetching the same missing file would write the same .part.
    resolve_checkpoints(config)
    queue = deque(enumerate(jobs))
    bar = VideoProgress(len(queue), config.progress if progress is None else progress)
    reporter = Reporter(summary, failures, bar, on_finish)
    ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA state
    workers: list[_DeviceWorker] = []
    threads = cpu_threads(devices)
    start_resource_tracker()  # shared with the workers' decode pools: see signals.py
    try:
        for rank, device in enumerate(devices):
            mine, theirs = ctx.Pipe(duplex=True)
            # Not a daemon: daemonic processes may not start their own decode workers.
            process = ctx.Process(target=worker_fn or _worker_main,
                                  name=f"hero-features-{device}",
                                  args=(rank, str(device), config, theirs,
                                        threads if _is_cpu(device) else None))
            process.start()
            theirs.close()  # so EOF on ours means the worker is gone
            workers.append(_DeviceWorker(rank, str(device), process, mine))
        live = list(workers)
        while live:
            wait([w.conn for w in live] + [w.process.sentinel for w in live], timeout=1.0)
            for worker in list(live):
                eof = _pump(worker, queue, reporter)
                if eof or not worker.process.is_alive():
                    _pump(worker, queue, reporter)  # what it sent before dying
                    worker.process.join(timeout=10)
                    _retire(worker, reporter)
                    live.remove(worker)
        if queue:
            _nobody_left(workers, queue, reporter)
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
            reporter.add_model_seconds(w.model_seconds)
        reporter.close()


def _pump(worker: _DeviceWorker, queue: deque, reporter: Reporter) -> bool:
    """Handle every message the worker has sent; True once its end is closed."""
    while True:
        try:
            if not worker.conn.poll():
                return False
            message = worker.conn.recv()
        except (EOFError, OSError):
            return True
        if isinstance(message, _Ask):
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
        elif isinstance(message, _Progress):
            if message.index in worker.held:
                if message.event == "begin":
                    reporter.begin(message.index, message.seconds)
                else:
                    reporter.reach(message.index, message.seconds or 0.0)
        elif isinstance(message, _Finished):
            worker.model_seconds = message.model_seconds
            job = worker.held.pop(message.index, None)
            if job is not None:  # the caller's own Job, not the copy that travelled
                reporter.report(replace(message.result, job=job), message.index)
        else:  # _Exit | _CouldNotStart | _Crashed
            worker.last = message
            if isinstance(message, _Exit):
                worker.model_seconds = message.model_seconds


def _retire(worker: _DeviceWorker, reporter: Reporter) -> None:
    last = worker.last
    code = worker.process.exitcode
    if isinstance(last, _Exit) and code == 0 and not worker.held:
        return
    _kill_group(worker.process.pid)  # its decode workers, if it left any behind
    who = f"worker {worker.rank} ({worker.device})"
    if isinstance(last, _CouldNotStart):
        reason = f"{who} could not start: {last.text}"
    elif isinstance(last, _Crashed):
        reason = f"{who} stopped on {last.text}"
    elif isinstance(last, _Exit):
        reason = f"{who} ended ({exit_text(code)}) without reporting every video it took"
    else:
        reason = f"{who} died ({exit_text(code)})"
    if not worker.held:
        reporter.note(reason if isinstance(last, _CouldNotStart) else
                      f"{reason}; it held no video")
        return
    reporter.note(f"{reason}; the {len(worker.held)} video(s) it held are logged as failed "
                  f"(stage worker) and will be redone by a rerun")
    for index in sorted(worker.held):
        reporter.fail(worker.held[index], "worker",
                      f"{reason} while this video was in its hands", index)
    worker.held.clear()


def _nobody_left(workers: list[_DeviceWorker], queue: deque, reporter: Reporter) -> None:
    if not any(w.took_any for w in workers):
        # Nothing was done: a run that could not start, not a run with failed videos.
        fatal = [w.last for w in workers if isinstance(w.last, _CouldNotStart)]
        if fatal and all(f.weights for f in fatal):
            raise WeightsError(fatal[0].text.split(": ", 1)[-1])
        words = [w.last.text if isinstance(w.last, (_CouldNotStart, _Crashed))
                 else exit_text(w.process.exitcode) for w in workers]
        raise StartupError(f"no worker could start: {words[0]}")
    while queue:
        index, job = queue.popleft()
        reporter.fail(job, "worker", "not started: every worker process had stopped", index)


# == a worker ======================================================================================

class _Channel:
    """The worker's end of its pipe. The writer thread reports finished videos while the main
    thread asks for jobs, and a Connection is not safe for two concurrent senders."""

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
        self.send(_Ask())
        if self.parent_gone:
            return None
        try:
            return self.conn.recv()
        except (OSError, EOFError):
            self.parent_gone = True
            return None


class _ForwardProgress:
    """The core's progress events, sent to the parent's bar: a video's position at most every
    0.2 s, its beginning always."""

    def __init__(self, channel: _Channel):
        self.channel = channel
        self._sent: dict[int, float] = {}

    def begin(self, index: int, duration: Optional[float]) -> None:
        self.channel.send(_Progress("begin", index, duration))

    def reach(self, index: int, seconds: float) -> None:
        now = time.monotonic()
        if now - self._sent.get(index, 0.0) >= 0.2:
            self._sent[index] = now
            self.channel.send(_Progress("reach", index, seconds))

    def forget(self, index: int) -> None:
        self._sent.pop(index, None)


def _worker_main(rank: int, device: str, config: RunConfig, conn,
                 cpu_threads: Optional[int]) -> None:
    from .signals import stop_on_signals

    # A SIGTERM to every process (SLURM's scancel) stops this worker as the SIGINT its parent
    # forwards does: what is finished is written, its decode workers and their shared memory
    # are cleaned up.
    with stop_on_signals():
        _device_worker(rank, device, config, conn, cpu_threads)


def _device_worker(rank: int, device: str, config: RunConfig, conn,
                   cpu_threads: Optional[int]) -> None:
    import torch

    from .device_runner import DeviceRunner
    from .pipeline import results
    from .writer import OutputWriter

    # Its own process group: if this worker dies, the parent kills its decode workers with it;
    # otherwise they would wait forever on a queue whose feeding end they also hold.
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    channel = _Channel(conn)
    progress = _ForwardProgress(channel)
    taken = 0
    runner = None

    def jobs():
        nonlocal taken
        while True:
            item = channel.request()
            if item is None:
                return
            taken += 1
            yield item

    def deliver(result: VideoResult, index: int) -> None:
        progress.forget(index)
        channel.send(_Finished(index, result, dict(runner.model_seconds)))

    try:
        runner = DeviceRunner.for_config(config, torch.device(device))
        writer = OutputWriter(deliver, config.records)
        try:
            with closing(results(config, runner, jobs(), progress=progress)) as done:
                for index, result in done:
                    writer.submit(result, index)
        finally:
            writer.close()
        writer.check()
    except BaseException as exc:  # told to the parent first, so it can name the cause
        text = f"{type(exc).__name__}: {exc}"
        channel.send(_CouldNotStart(isinstance(exc, WeightsError), text) if taken == 0
                     else _Crashed(text))
        if isinstance(exc, (WeightsError, KeyboardInterrupt)):
            return
        raise
    channel.send(_Exit(dict(runner.model_seconds)))
