"""Where finished videos are counted: the failure log, the summary, the progress bar and the
caller's on_finish(job, ok). Every backend sends its VideoResults to one Reporter in the
process the user started (the --gpus workers and Ray's decode tasks send theirs back), so
the log has one writer and the summary one count.
"""
from __future__ import annotations

import threading
from typing import Callable, Hashable, Optional

from .assembler import VideoResult
from .config import Job
from .outputs import FailureLog, Summary
from .progress import VideoProgress

OnFinish = Optional[Callable[[Job, bool], None]]


class Reporter:
    def __init__(self, summary: Summary, failures: Optional[FailureLog],
                 progress: Optional[VideoProgress] = None, on_finish: OnFinish = None):
        self.summary = summary
        self.failures = failures  # None: nothing is logged (the Python API)
        self.bar = progress if progress is not None else VideoProgress(None, enabled=False)
        self.on_finish = on_finish
        self._lock = threading.Lock()  # results come from a writer thread too

    # -- progress, per video: begin (its duration), reach (seconds done), then report ---------
    def begin(self, key: Hashable, duration: Optional[float]) -> None:
        self.bar.begin(key, duration)

    def reach(self, key: Hashable, seconds: float) -> None:
        self.bar.reach(key, seconds)

    def note(self, text: str) -> None:
        self.bar.note(f"hero-features: {text}")

    # -- finished videos ---------------------------------------------------------------------
    def report(self, result: VideoResult, key: Hashable = None) -> None:
        job = result.job
        with self._lock:
            if result.ok:
                self.summary.done += 1
                self.summary.video_seconds += result.seconds
                for model, rows in result.rows.items():
                    self.summary.rows[model] = self.summary.rows.get(model, 0) + rows
                if result.scaled_on_cpu is not None:
                    reasons = self.summary.scaled_on_cpu
                    reasons[result.scaled_on_cpu] = reasons.get(result.scaled_on_cpu, 0) + 1
                if result.warnings:  # logged once the features exist, never for a failure
                    self.summary.warned += 1
                    for stage, text in result.warnings:
                        for model in job.outputs:
                            self._log("warn", job, model, stage, text)
            else:
                self.summary.failed += 1
                stage, reason = result.failure
                for model in job.outputs:
                    self._log("record", job, model, stage, reason)
            self.bar.end(key, result.ok, result.seconds)
            if self.on_finish is not None:
                self.on_finish(job, result.ok)

    def fail(self, job: Job, stage: str, reason: str, key: Hashable = None) -> None:
        """A video that never reached a decoder, or was lost with its process."""
        self.report(VideoResult(job, failure=(stage, reason)), key)

    def add_model_seconds(self, seconds: dict) -> None:
        with self._lock:
            for model, busy in seconds.items():
                self.summary.model_seconds[model] = \
                    self.summary.model_seconds.get(model, 0.0) + busy

    def close(self) -> None:
        self.bar.close()

    def _log(self, how: str, job: Job, model: str, stage: str, text: str) -> None:
        if self.failures is not None:
            getattr(self.failures, how)(job.video_path, model, stage, text)
