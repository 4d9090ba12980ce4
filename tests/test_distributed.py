"""Scaling backends: --gpus (two CPU workers stand in for two GPUs), --shard, and Ray.

Every backend's outputs must be bit-equal to a single-process run. CPU results depend on the
number of torch threads in their last bits, so the single-process reference runs with the
thread count the backend's workers get. Batch composition does not matter: batches have one
fixed shape, whichever backend fills them (Ray's actor batches other videos' units together
than the local run does), also for CLIP, whose matmuls give other bits at other shapes.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import hero_features.multigpu as multigpu
import hero_features.ray_backend as ray_backend
from hero_features.config import Job, RunConfig
from hero_features.manifest import is_complete
from hero_features.messages import Units
from hero_features.multigpu import cpu_threads, resolve_gpus, run_multi_device
from hero_features.outputs import FailureLog, Summary
from hero_features.pipeline import run_on_device
from hero_features.shards import parse_shard, select_shard, shard_key, shard_of
from hero_features.producer import decode_video_units
from hero_features.weights import WeightsError
from helpers import failures, load

from conftest import VIDEOS

SHORT = VIDEOS / "v07_400x300_25fps_2s.mp4"  # 1 resnet row at clip_len 3/2
CARPHONE = VIDEOS / "carphone_pristine.mp4"  # 3 rows, another frame size
NAMES = {"a.mp4": SHORT, "b.mp4": CARPHONE, "c.mp4": SHORT, "d.mp4": CARPHONE}


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for name, source in NAMES.items():
        shutil.copy(source, folder / name)
    return folder


BOTH = ("resnet", "clip-vit")


def make_config(weights: Path, out: Path, workers: int = 0, models=("resnet",),
                scale_on: str = "cpu") -> RunConfig:
    return RunConfig(models=list(models), clip_len=Fraction(3, 2), batch_size=2,
                     decode_workers=workers, weights_dir=weights, download=False,
                     output_dir=out, progress=False, scale_on=scale_on)


def make_jobs(video_dir: Path, out: Path, names=None, models=("resnet",)) -> list[Job]:
    return [Job(video_dir / name, {m: out / f"{m}_features" / f"{Path(name).stem}.npz"
                                   for m in models})
            for name in sorted(names or NAMES)]


def todo(jobs: list[Job]) -> list[Job]:
    """What the cli hands a backend on a rerun: the jobs whose output is not complete."""
    return [job for job in jobs if not is_complete(job.outputs["resnet"], 2048)]


@contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(video_dir, synthetic_checkpoints, tmp_path_factory):
    """name -> features of a single-process run of resnet and clip-vit, per torch thread
    count and model (computed once per thread count)."""
    runs: dict[int, dict] = {}

    def get(threads: int, model: str = "resnet") -> dict:
        if threads not in runs:
            out = tmp_path_factory.mktemp(f"reference_{threads}")
            summary = Summary()
            with torch_threads(threads):
                run_on_device(make_config(synthetic_checkpoints, out, models=BOTH),
                              torch.device("cpu"), make_jobs(video_dir, out, models=BOTH),
                              summary, FailureLog(out))
            assert summary.done == len(NAMES), failures(out)
            runs[threads] = {m: {name: load(out / f"{m}_features" / f"{Path(name).stem}.npz")
                                 for name in NAMES} for m in BOTH}
        return runs[threads][model]

    return get


# Failures injected into spawned workers and Ray tasks: module-level, so they can be sent there.
# Each exits at once (os._exit) holding its video, as a process hit by a fatal CUDA error or
# the OOM killer would.
DIES_ON = "b.mp4"  # the --gpus worker that takes this video dies
RAY_DIES_ON = "c.mp4"  # the Ray decode task of this video dies, on every attempt
DEATH_CODE = 86


class _DieOnTaking:
    """A worker's pipe end that ends the worker as soon as it is handed DIES_ON."""

    def __init__(self, conn):
        self.conn = conn

    def recv(self):
        item = self.conn.recv()
        if item is not None and Path(item[1].video_path).name == DIES_ON:
            os._exit(DEATH_CODE)
        return item

    def __getattr__(self, name):
        return getattr(self.conn, name)


def worker_dying_on_b(rank, device, config, conn, threads):
    multigpu._worker_main(rank, device, config, _DieOnTaking(conn), threads)


def decode_dying_on_c(video_id, path, groups, settings, active=None, on_frame=None):
    if Path(path).name == RAY_DIES_ON:
        os._exit(DEATH_CODE)
    for message in decode_video_units(video_id, path, groups, settings, active,
                                      on_frame=on_frame):
        # The samples are all device-path videos: with --scale-on device, packed units only.
        if isinstance(message, Units) and settings.scale_on == "device":
            assert message.geometry is not None, "rgb24 units on the device path"
        yield message


def assert_matches(out: Path, expected: dict, names, model: str = "resnet") -> None:
    for name in names:
        got = load(out / f"{model}_features" / f"{Path(name).stem}.npz")
        assert np.array_equal(got, expected[name]), (name, model)


# == --gpus ========================================================================================

def test_two_workers_do_every_video_once_and_match_one_process(tmp_path, video_dir, reference,
                                                              synthetic_checkpoints):
    finished = []
    summary = Summary(videos=len(NAMES))
    run_multi_device(make_config(synthetic_checkpoints, tmp_path, workers=1), ["cpu", "cpu"],
                     make_jobs(video_dir, tmp_path), summary, FailureLog(tmp_path),
                     on_finish=lambda job, ok: finished.append((job.video_path.name, ok)))
    assert Counter(finished) == {(name, True): 1 for name in NAMES}
    assert (summary.done, summary.failed) == (len(NAMES), 0)
    assert summary.rows == {"resnet": 8} and summary.video_seconds > 0
    assert failures(tmp_path) == []
    assert_matches(tmp_path, reference(cpu_threads(["cpu", "cpu"])), NAMES)


def test_a_dead_workers_videos_are_logged_then_redone_by_a_rerun(tmp_path, video_dir, reference,
                                                               synthetic_checkpoints):
    config = make_config(synthetic_checkpoints, tmp_path, workers=1)
    jobs = make_jobs(video_dir, tmp_path)
    finished = []
    summary = Summary(videos=len(NAMES))
    # whichever worker takes b.mp4 exits holding it
    run_multi_device(config, ["cpu", "cpu"], jobs, summary, FailureLog(tmp_path),
                     on_finish=lambda job, ok: finished.append((job.video_path.name, ok)),
                     worker_fn=worker_dying_on_b)
    assert sorted(name for name, _ in finished) == sorted(NAMES)  # each reported once
    lost = {name for name, ok in finished if not ok}
    logged = failures(tmp_path)
    assert "b.mp4" in lost
    assert {Path(f["video_path"]).name for f in logged} == lost
    assert all(f["stage"] == "worker" and f"exit code {DEATH_CODE}" in f["error"]
               for f in logged)
    assert (summary.done, summary.failed) == (len(NAMES) - len(lost), len(lost))
    for name in NAMES:  # no partial output for what was lost, a finished one for the rest
        path = tmp_path / "resnet_features" / f"{Path(name).stem}.npz"
        assert path.exists() == (name not in lost), name
    assert not list(tmp_path.rglob("*.tmp"))

    # The rerun is what the cli would hand any backend; here the plain single-process one,
    # which saves two more worker start-ups (a ResNet-152 load each).
    rerun = todo(jobs)
    assert {job.video_path.name for job in rerun} == lost
    summary = Summary(videos=len(rerun))
    threads = cpu_threads(["cpu", "cpu"])
    with torch_threads(threads):
        run_on_device(config, torch.device("cpu"), rerun, summary, FailureLog(tmp_path))
    assert (summary.done, summary.failed) == (len(lost), 0)
    assert_matches(tmp_path, reference(threads), NAMES)


def test_missing_weights_stop_the_run_before_any_worker_starts(tmp_path, video_dir):
    config = make_config(tmp_path / "no-weights", tmp_path)
    config.checkpoint = tmp_path / "missing.pth"
    with pytest.raises(WeightsError, match="does not exist"):
        run_multi_device(config, ["cpu", "cpu"], make_jobs(video_dir, tmp_path), Summary(),
                         FailureLog(tmp_path))


def test_gpu_lists():
    assert resolve_gpus("all", available=2) == ["cuda:0", "cuda:1"]
    assert resolve_gpus("0,1,3", available=4) == ["cuda:0", "cuda:1", "cuda:3"]
    for bad, available in (("all", 0), ("0,4", 4), ("1,1", 2), ("x", 2), ("", 2)):
        with pytest.raises(ValueError):
            resolve_gpus(bad, available=available)


# == --shard =======================================================================================

paths = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                         min_size=1, max_size=30), unique=True, max_size=60)


@settings(max_examples=200, deadline=None)
@given(names=paths, count=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_shards_cover_the_manifest_exactly_once_in_any_order(names, count, seed):
    jobs = [Job(Path("/corpus") / name, {"resnet": Path(f"{i}.npz")})
            for i, name in enumerate(names)]
    shards = [select_shard(jobs, k, count) for k in range(count)]
    assert sorted(id(job) for shard in shards for job in shard) == sorted(map(id, jobs))
    shuffled = jobs[:]
    random.Random(seed).shuffle(shuffled)
    for k in range(count):  # membership does not depend on the row order
        assert {id(j) for j in select_shard(shuffled, k, count)} == {id(j) for j in shards[k]}


def test_shard_assignment_is_pinned_across_versions_and_machines():
    # blake2b of the UTF-8 path; changing these numbers would move videos between shards of
    # job arrays that are already running.
    assert [shard_of(k, 16) for k in ("a.mp4", "sub/b.webm",
                                      "videos/v07_400x300_25fps_2s.mp4", "ü/ß.mkv")] == \
        [4, 5, 13, 2]
    job = Job(Path("/mnt/a/corpus/sub/b.webm"), {})
    assert shard_key(job, Path("/mnt/a/corpus")) == "sub/b.webm"  # folder mode: mount-free


def test_shard_spelling():
    assert parse_shard("0/1") == (0, 1) and parse_shard("15/16") == (15, 16)
    for bad in ("16/16", "-1/4", "1/0", "3", "a/b", "1/2/3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


# == --ray =========================================================================================

def test_ray_backend_matches_the_local_run_and_logs_what_fails(tmp_path, video_dir, reference,
                                                               synthetic_checkpoints):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[data]')")
    from hero_features.ray_backend import RayOptions, run_ray

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    names = ["a.mp4", "b.mp4", "c.mp4"]
    jobs = make_jobs(video_dir, tmp_path, names, models=BOTH) + \
        [Job(broken, {m: tmp_path / f"{m}_features" / "broken.npz" for m in BOTH})]
    finished = []
    summary = Summary(videos=len(jobs))
    # The decode task of c.mp4 dies on every attempt: retried, then logged. The failing decode
    # travels by value: Ray's workers need not import this test module. The decode tasks
    # send packed YUV units (--scale-on device) and the actors convert them: the features
    # must still be the local run's, which scaled on the CPU.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        run_ray(make_config(synthetic_checkpoints, tmp_path, models=BOTH, scale_on="device"),
                jobs, summary,
                FailureLog(tmp_path), RayOptions(gpus_per_actor=0, max_retries=1),
                on_finish=lambda job, ok: finished.append((job.video_path.name, ok)),
                decode_fn=decode_dying_on_c)
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert sorted(finished) == [("a.mp4", True), ("b.mp4", True), ("broken.mp4", False),
                                ("c.mp4", False)]
    assert (summary.done, summary.failed, summary.rows) == (2, 2, {"resnet": 4, "clip-vit": 4})
    assert summary.model_seconds["resnet"] > 0  # the actors' time, for the rows/s line
    logged = {Path(f["video_path"]).name: f for f in failures(tmp_path)}
    assert logged.keys() == {"broken.mp4", "c.mp4"}
    assert logged["broken.mp4"]["stage"] in ("open", "probe")
    assert logged["c.mp4"]["stage"] == "ray" and "after 1 retries" in logged["c.mp4"]["error"]
    assert not any((tmp_path / f"{m}_features" / f"{n}.npz").exists()
                   for n in ("broken", "c") for m in BOTH)
    # Ray gives a CPU actor one OpenMP thread (OMP_NUM_THREADS = its CPUs).
    for model in BOTH:
        assert_matches(tmp_path, reference(1, model), ["a.mp4", "b.mp4"], model)


class _Clock:
    """The watchdog's time.monotonic, moved on by the test alone."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class _CountedWaits:
    """Stands in for a _StallWatch's `stopped` event and counts the watch thread's polls, so
    the test can know that the watch looked at the clock, instead of sleeping and hoping."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.polls = 0
        self.cond = threading.Condition()

    def wait(self, timeout=None) -> bool:
        with self.cond:
            self.polls += 1
            self.cond.notify_all()
        return self.event.wait(timeout)

    def set(self) -> None:
        self.event.set()

    def two_more_polls(self) -> None:
        """Returns once the watch has passed through its check at least once more."""
        with self.cond:
            target = self.polls + 2
            assert self.cond.wait_for(lambda: self.polls >= target, timeout=60), \
                "the watch thread stopped polling"


def _watch(monkeypatch, limit: float, on_stall):
    clock = _Clock()
    monkeypatch.setattr(ray_backend, "time", clock)  # only the watchdog's module sees it
    before = set(threading.enumerate())
    watch = ray_backend._StallWatch(limit, "x.mp4", on_stall=on_stall)
    thread, = set(threading.enumerate()) - before
    watch.stopped = _CountedWaits(watch.stopped)
    return watch, clock, thread


def test_the_ray_decode_watchdog_fires_on_a_stall_only(monkeypatch):
    fired = threading.Event()
    watch, clock, thread = _watch(monkeypatch, 0.2, fired.set)
    with watch.pause():  # waiting for the models is not a stall, however long it lasts
        clock.now = 1000.0
        watch.stopped.two_more_polls()
        assert not fired.is_set()
    watch.stopped.two_more_polls()  # the pause ended with a tick: no stall yet
    assert not fired.is_set()
    clock.now += 0.1
    watch.stopped.two_more_polls()  # within the limit
    assert not fired.is_set()
    clock.now += 0.2  # past it
    assert fired.wait(60)
    thread.join(60)
    assert not thread.is_alive()  # it fires once and ends
    watch.stop()


def test_a_stopped_ray_decode_watchdog_never_fires(monkeypatch):
    quiet = threading.Event()
    watch, clock, thread = _watch(monkeypatch, 0.2, quiet.set)
    watch.stop()  # the task ended: the worker goes on to other tasks
    thread.join(60)
    assert not thread.is_alive()  # so no later stall can end the worker
    clock.now = 1000.0
    assert not quiet.is_set()
