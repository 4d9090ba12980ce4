"""--ray: decode tasks on the cluster's CPUs, model actors on its GPUs, the driver's Reporter.

A decode task (`_ray_video`, one per video) decodes with producer.decode_video_units, sends
its units to the model actors, puts the rows back with the local run's VideoAssembler and
writes the outputs (writer.write_result; they must be on storage every node sees). A model
actor (`_ModelActor`, one per GPU) runs the local run's Batcher and DeviceRunner: requests
that arrive while its device is busy are batched together, in the same fixed shapes, so a
video's features are the same bytes as a local run's. The driver keeps the queue and sends
each task's VideoResult to one Reporter (failure log, summary, progress bar).

Nothing here imports torch at module level: decode tasks import this module on every CPU
worker of a cluster, where torch would cost seconds and ~300 MB per process for nothing.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .assembler import RowTable, VideoAssembler, VideoResult
from .config import DecodeSettings, InputGroup, Job, RunConfig, active_groups, input_groups
from .errors import StartupError, WeightsError
from .messages import Failed, Units
from .models import get_spec
from .outputs import FailureLog, Summary
from .producer import decode_video_units
from .progress import VideoProgress
from .reporter import OnFinish, Reporter
from .weights import resolve_checkpoints
from .writer import write_result


@dataclass
class RayOptions:
    address: Optional[str] = None  # None: RAY_ADDRESS or a running local instance, else a new one
    actors: Optional[int] = None  # model actors (default: one per GPU, or one when there are none)
    gpus_per_actor: Optional[float] = None  # default 1 when the cluster has GPUs, else 0
    in_flight: Optional[int] = None  # videos decoding at once (default 2 per cluster CPU)
    max_retries: int = 2  # reruns of a decode task whose process or node died
    calls_per_actor: int = 16  # concurrent forward requests an actor accepts (and batches)


# == the model actor ===============================================================================

class _Request:
    """One forward call's units inside the actor's batches, and their rows as they return."""

    def __init__(self, count: int):
        self.count = count
        self.returned = 0
        self.rows = RowTable()
        self.error: Optional[str] = None

    def put(self, start: int, count: int, rows, error: Optional[str]) -> None:
        if error is not None:
            self.error = self.error or error
        elif rows is not None:
            self.rows.put(start, rows)
        self.returned += count

    @property
    def complete(self) -> bool:
        return self.returned == self.count


class _ModelActor:
    """The models of a run on one device (a GPU when Ray gave this actor one). `forward` is
    called from many threads at once (max_concurrency): the calls' units go into one Batcher,
    and whichever call finds the device free runs every batch there is, full ones and padded
    partial ones, until its own rows are back; nobody waits on a timer."""

    def __init__(self, config: RunConfig, use_gpu: bool):
        import torch

        from .batcher import Batcher
        from .device_runner import DeviceRunner

        self.runner = DeviceRunner.for_config(config, torch.device("cuda" if use_gpu else "cpu"))
        self.batcher = Batcher(config.batch_size, pin_memory=self.runner.pin_memory)
        self.cond = threading.Condition()
        self.busy = False
        self.full: list = []  # batches filled up, not yet run

    def ready(self) -> str:
        return str(self.runner.device)

    def seconds(self) -> dict:
        return dict(self.runner.model_seconds)

    def forward(self, model: str, units: np.ndarray, geometry=None) -> tuple:
        """(rows, None), or (None, "model: error") when the model failed on them. `geometry`:
        that of packed YUV units (--scale-on device)."""
        request = _Request(len(units))
        with self.cond:
            self.full += list(self.batcher.add(model, request, 0, units, geometry))
            while not request.complete:
                if self.busy:
                    self.cond.wait()
                    continue
                self.busy = True
                batches, self.full = self.full + self.batcher.flush(), []
                finished = []
                self.cond.release()
                try:
                    for batch in batches:
                        done = self.runner.launch(batch)
                        finished += [done] if done is not None else []
                    done = self.runner.finish()
                    finished += [done] if done is not None else []
                finally:
                    self.cond.acquire()
                    for done in finished:
                        for owner, start, count, rows in done.batch.split(done.rows):
                            owner.put(start, count, rows, done.error)
                        self.batcher.give_back(done.batch)
                    self.busy = False
                    self.cond.notify_all()
        if request.error is not None:
            return None, request.error
        return request.rows.stack(), None


# == the decode task ===============================================================================

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


def _ray_video(index: int, video_path: str, outputs: dict, groups: Sequence[InputGroup],
               settings: DecodeSettings, batch_size: int, actors: list,
               video_timeout: Optional[float] = None, records: Optional[dict] = None,
               decode_fn: Callable = decode_video_units) -> VideoResult:
    """One video on a CPU: decode with `decode_fn`, send chunks of up to `batch_size` units to
    the model actors (taking turns), put the rows back in order and write the outputs; the
    VideoResult without its features. Its arguments are plain or torch-free types, so
    unpickling them imports no torch."""
    import ray

    video = VideoAssembler(Job(Path(video_path), {m: Path(p) for m, p in outputs.items()}))
    active = active_groups(groups, outputs)
    buffers: dict[int, list] = {g: [] for g in active}
    geometries: dict[int, object] = {}  # group -> the geometry of its buffered units
    calls: list[tuple] = []  # (model, first unit index, count, ObjectRef of (rows, error))
    outstanding: list = []  # refs of calls not known to be finished
    turn = index

    def send(group: int) -> None:
        nonlocal turn
        units = np.concatenate(buffers[group])
        buffers[group].clear()
        geometry = geometries.pop(group, None)
        ref = ray.put(units)  # once, shared by the models of the group
        for model in groups[group].models:
            if model in outputs:
                actor = actors[turn % len(actors)]
                turn += 1
                call = actor.forward.remote(model, ref, geometry)
                calls.append((model, video.reserve(model, len(units)), len(units), call))
                outstanding.append(call)
        # A few calls in flight let decoding overlap the models without piling up units.
        if len(outstanding) > 4:
            with watch.pause():
                _, outstanding[:] = ray.wait(outstanding, num_returns=len(outstanding) - 4,
                                             fetch_local=False)

    watch = _StallWatch(video_timeout, video_path)
    try:
        for message in decode_fn(index, video_path, groups, settings, active,
                                 on_frame=watch.tick):
            watch.tick()
            if isinstance(message, Units):
                if buffers[message.group] and geometries.get(message.group) != message.geometry:
                    send(message.group)  # one call, one kind of unit
                buffers[message.group].append(message.units)
                geometries[message.group] = message.geometry
                if sum(len(u) for u in buffers[message.group]) >= batch_size:
                    send(message.group)
            else:
                video.record(message)
                if isinstance(message, Failed):
                    break
    finally:
        watch.stop()
    if not video.failed:
        for group in active:
            if buffers[group]:
                send(group)
        for model, start, count, call in calls:
            try:
                rows, error = ray.get(call)
            except ray.exceptions.RayTaskError as exc:  # raised in the actor: a bug
                rows, error = None, f"{model}: {_ray_error_text(exc)}"
            if error is not None:
                video.fail("model", error)
                break
            video.put(model, start, rows)
    written, _ = write_result(video.result(), records)
    return written


# == the driver ====================================================================================

def run_ray(config: RunConfig, jobs: Iterable[Job], summary: Summary, failures: FailureLog,
            options: Optional[RayOptions] = None, progress: Optional[bool] = None,
            on_finish: OnFinish = None, decode_fn: Callable = decode_video_units) -> None:
    """Extract `jobs` on a Ray cluster; outputs go to the jobs' paths, which every node must
    see (shared storage). The failure log and the counts are kept here, on the driver.

    A decode task whose worker or node dies is rerun `max_retries` times, then its video is
    logged with stage "ray". Uses the running Ray instance if this process already has one.
    decode_fn: the decode each task runs (decode_video_units's arguments), shipped to the
    cluster's workers; tests pass one that kills its worker.
    """
    try:
        import ray
    except ImportError:
        raise StartupError("--ray needs Ray: pip install 'hero-features[ray]'") from None

    options = options or RayOptions()
    resolve_checkpoints(config)  # a missing checkpoint stops the run before any cluster work
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address or None, include_dashboard=False)
    queue = deque(enumerate(jobs))
    bar = VideoProgress(len(queue), config.progress if progress is None else progress)
    reporter = Reporter(summary, failures, bar, on_finish)
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
        groups = input_groups([get_spec(name) for name in config.models])
        limit = options.in_flight or max(2, 2 * int(resources.get("CPU", 1)))
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                index, job = queue.popleft()
                outputs = {model: str(path) for model, path in job.outputs.items()}
                in_flight[task.remote(index, str(job.video_path), outputs, groups,
                                      config.decode_settings, config.batch_size, actors,
                                      config.video_timeout, config.records,
                                      decode_fn)] = (index, job)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                index, job = in_flight.pop(ref)
                try:
                    result = replace(ray.get(ref), job=job)
                except ray.exceptions.RayError as exc:
                    result = VideoResult(job, failure=(
                        "ray", f"{_ray_error_text(exc)} (after {options.max_retries} retries)"))
                reporter.report(result, index)
        for seconds in ray.get([actor.seconds.remote() for actor in actors]):
            reporter.add_model_seconds(seconds)
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
        reporter.close()
        if started_here:
            ray.shutdown()


def _ray_error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:  # an exception raised in the task: its own type and message
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
