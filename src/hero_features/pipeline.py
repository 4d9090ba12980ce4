"""The core every local run goes through: decode messages in, one VideoResult per video out.

Decoding runs in decode worker processes (workers.DecodePool) or inline. Each video's units
are batched across videos (batcher.py: one fixed shape per model and unit shape), run on the
device (device_runner.py) and put back at their place in their video (assembler.py); a video
is finished once its decoder is done and all of its units have been through the models.
`results()` yields the finished videos; `run_on_device` is the command line's local run:
results written (writer.py) and reported (reporter.py). The --gpus workers run `results()`
too, and the Python API (api.py) hands its results to the caller.
"""
from __future__ import annotations

import sys
from contextlib import closing
from typing import Hashable, Iterable, Iterator, Optional, Sequence

from tqdm import tqdm

from .assembler import VideoAssembler, VideoResult
from .batcher import Batch, Batcher
from .config import InputGroup, Job, RunConfig, active_groups, input_groups
from .device_runner import DeviceRunner, Finished
from .messages import Done, End, Failed, Info, ScaledOnCpu, Units, Warned
from .outputs import FailureLog, Summary
from .progress import VideoProgress
from .reporter import OnFinish, Reporter
from .workers import DecodePool, inline_messages
from .writer import OutputWriter

# Decoded videos whose rows wait in partial batches (of a frame size no other video has, or
# at the end of a clip model's stream): past this many, the partial batches holding their
# rows are run, padded to the fixed shape (batches of videos still decoding keep filling).
MAX_WAITING_VIDEOS = 32


class Pipeline:
    """Videos registered with `add`, their decode messages passed to `feed`; `feed` and
    `flush` return the videos that finished, as (key, VideoResult)."""

    def __init__(self, runner: DeviceRunner, groups: Sequence[InputGroup], batch_size: int,
                 clip_len, progress: Optional[Reporter] = None):
        self.runner = runner
        self.groups = groups
        self.batcher = Batcher(batch_size, pin_memory=runner.pin_memory)
        self.clip_len = float(clip_len)
        self.progress = progress  # begin(key, duration) / reach(key, seconds), or None
        self._videos: dict[int, VideoAssembler] = {}
        self._keys: dict[int, Hashable] = {}
        self._finished: list[tuple[Hashable, VideoResult]] = []
        self._next_id = 0

    def add(self, key: Hashable, job: Job) -> tuple[int, str, tuple]:
        """Register a video; the decode job for it, (video_id, path, active group indices)."""
        video_id, self._next_id = self._next_id, self._next_id + 1
        self._videos[video_id] = VideoAssembler(job)
        self._keys[video_id] = key
        return video_id, str(job.video_path), active_groups(self.groups, job.outputs)

    def feed(self, message) -> list[tuple[Hashable, VideoResult]]:
        video = self._videos.get(message.video_id)
        if video is None:
            return []
        if isinstance(message, Units):
            if not video.failed:
                for model in self.groups[message.group].models:
                    if model in video.job.outputs:
                        start = video.reserve(model, len(message.units))
                        for batch in self.batcher.add(model, message.video_id, start,
                                                      message.units, message.geometry):
                            self._run(batch)
        elif isinstance(message, Info):
            if self.progress is not None:
                duration = message.info.duration if message.info is not None else None
                self.progress.begin(self._keys[message.video_id], duration)
        elif isinstance(message, (Failed, Warned, ScaledOnCpu, End)):
            video.record(message)
        elif isinstance(message, Done):
            video.decoded = True
            self._maybe_finish(message.video_id)
            # Videos of rare frame sizes must not wait for a full batch forever.
            waiting = {i for i, v in self._videos.items() if v.decoded}
            if len(waiting) > MAX_WAITING_VIDEOS:
                self._run_partial_batches(waiting)
        return self._take_finished()

    def flush(self) -> list[tuple[Hashable, VideoResult]]:
        """Run every partial batch and collect the one in flight: all decoded videos finish."""
        self._run_partial_batches()
        return self._take_finished()

    def _run_partial_batches(self, videos=None) -> None:
        for batch in self.batcher.flush(videos):
            self._run(batch)
        finished = self.runner.finish()
        if finished is not None:
            self._collected(finished)

    def _run(self, batch: Batch) -> None:
        if all(self._videos[v].failed for v in batch.owners):
            self._collected(Finished(batch))  # nobody wants these rows
            return
        finished = self.runner.launch(batch)
        if finished is not None:
            self._collected(finished)

    def _collected(self, finished: Finished) -> None:
        batch = finished.batch
        for video_id, start, count, rows in batch.split(finished.rows):
            video = self._videos[video_id]
            if finished.error is not None:
                video.fail("model", finished.error)
            if rows is None:
                video.lost(count)
            else:
                video.put(batch.model, start, rows)
        self.batcher.give_back(batch)
        for video_id in batch.owners:
            video = self._videos[video_id]
            if self.progress is not None and not video.failed:
                # One row per clip_len seconds (the short-video rule's faster rate is capped
                # at the duration by the bar).
                self.progress.reach(self._keys[video_id], video.rows_done() * self.clip_len)
            self._maybe_finish(video_id)

    def _maybe_finish(self, video_id: int) -> None:
        video = self._videos.get(video_id)
        if video is not None and video.finished:
            del self._videos[video_id]
            self._finished.append((self._keys.pop(video_id), video.result()))

    def _take_finished(self) -> list[tuple[Hashable, VideoResult]]:
        finished, self._finished = self._finished, []
        return finished


def results(config: RunConfig, runner: DeviceRunner, jobs: Iterable[tuple[Hashable, Job]],
            total: Optional[int] = None,
            progress: Optional[Reporter] = None) -> Iterator[tuple[Hashable, VideoResult]]:
    """(key, VideoResult) of every job, (key, Job) each, in the order they finish. Jobs are
    handed to the decoders lazily, so a decode worker never runs ahead of the models."""
    groups = input_groups([runner.specs[name] for name in config.models])
    pipeline = Pipeline(runner, groups, config.batch_size, config.clip_len, progress)
    settings = config.decode_settings
    workers = config.decode_workers if total is None else min(config.decode_workers, total)
    pool = DecodePool(workers, groups, settings, config.video_timeout) if workers > 0 else None
    if pool is not None and pool.transport_note:
        tqdm.write(f"note: decoded frames go through pipes, not shared memory: "
                   f"{pool.transport_note}", file=sys.stderr)
    decode_jobs = (pipeline.add(key, job) for key, job in jobs)
    messages = pool.messages(decode_jobs) if pool is not None else \
        inline_messages(decode_jobs, groups, settings, config.video_timeout)
    try:
        for message in messages:
            yield from pipeline.feed(message)
        yield from pipeline.flush()
    finally:
        if pool is not None:
            pool.close()


def run_on_device(config: RunConfig, device, jobs: Sequence[Job], summary: Summary,
                  failures: FailureLog, on_finish: OnFinish = None,
                  progress: Optional[bool] = None) -> None:
    """The command line's run on one device: every job's features written, each video
    reported once (failure log, summary, progress bar, on_finish(job, ok)). Raises OSError
    when the outputs' disk cannot take more (what is finished is written)."""
    bar = VideoProgress(len(jobs), config.progress if progress is None else progress)
    reporter = Reporter(summary, failures, bar, on_finish)
    runner = DeviceRunner.for_config(config, device)
    writer = OutputWriter(reporter.report, config.records)
    try:
        with closing(results(config, runner, enumerate(jobs), len(jobs), reporter)) as done:
            for key, result in done:
                writer.submit(result, key)
    finally:
        writer.close()
        reporter.add_model_seconds(runner.model_seconds)
        reporter.close()
    writer.check()
