"""One video's rows as they come back from the models, and the one value a finished video
becomes (VideoResult): its features per model, or the stage and reason it failed.

Every backend assembles videos here: the local run and each --gpus worker (pipeline.py) and
each Ray decode task (ray_backend.py). No torch: Ray's CPU tasks use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from .config import Job
from .messages import End, Failed, ScaledOnCpu, Warned


@dataclass
class VideoResult:
    """A finished video. `features`: model -> (N, D) float16 rows (dropped once written, see
    without_features); `rows`: model -> N; `failure`: (stage, reason) when it gave none;
    `warnings`: (stage, text) of features from a damaged stream; `seconds`: of video decoded;
    `scaled_on_cpu`: with --scale-on device, why (some of) its frames were scaled by the CPU
    graph instead (the features are the same either way)."""

    job: Job
    features: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    failure: Optional[tuple] = None
    warnings: list = field(default_factory=list)
    seconds: float = 0.0
    scaled_on_cpu: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def video(self):
        return self.job.video_path

    def without_features(self) -> "VideoResult":
        """The same result, light enough to send to another process."""
        return replace(self, features={})

    def failed(self, stage: str, reason: str) -> "VideoResult":
        """This video, failed at `stage` after all (e.g. its outputs could not be written)."""
        return replace(self, features={}, rows={}, failure=(stage, reason), warnings=[])


class RowTable:
    """Rows of one model by unit index; complete when indices 0..n-1 are all there."""

    def __init__(self):
        self._rows: dict[int, np.ndarray] = {}

    def put(self, start: int, rows) -> None:
        for i, row in enumerate(rows):
            self._rows[start + i] = row

    def __len__(self) -> int:
        return len(self._rows)

    def stack(self) -> np.ndarray:
        return np.stack([self._rows[i] for i in range(len(self._rows))])


class VideoAssembler:
    """Rows by unit index per model, the units still with the models, warnings and failure;
    `result()` once the decoder is done and nothing is pending."""

    def __init__(self, job: Job):
        self.job = job
        self.tables = {model: RowTable() for model in job.outputs}
        self.next_index = {model: 0 for model in job.outputs}
        self.pending = 0  # units sent to a model whose rows have not come back
        self.decoded = False  # the decoder has nothing more for this video
        self.failure: Optional[tuple] = None
        self.warnings: list = []
        self.seconds = 0.0
        self.scaled_on_cpu: Optional[str] = None  # see VideoResult

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def finished(self) -> bool:
        return self.decoded and not self.pending

    def reserve(self, model: str, count: int) -> int:
        """The first unit index of the next `count` units of `model`, now pending."""
        start = self.next_index[model]
        self.next_index[model] = start + count
        self.pending += count
        return start

    def put(self, model: str, start: int, rows) -> None:
        """Rows back from the model (ignored once the video failed)."""
        if not self.failed:
            self.tables[model].put(start, rows)
        self.pending -= len(rows)

    def lost(self, count: int) -> None:
        """Units that will never come back (their batch failed or was skipped)."""
        self.pending -= count

    def fail(self, stage: str, reason: str) -> None:
        """The first failure is the one reported; its rows are dropped."""
        if self.failure is None:
            self.failure = (stage, reason)
            self.tables = {model: RowTable() for model in self.job.outputs}

    def warn(self, stage: str, text: str) -> None:
        self.warnings.append((stage, text))

    def record(self, message) -> None:
        """Take in what a decoder says about this video besides its units: Failed, Warned,
        ScaledOnCpu or End (messages.py); other messages are not this method's."""
        if isinstance(message, Failed):
            self.fail(message.stage, message.reason)
        elif isinstance(message, Warned):
            self.warn(message.stage, message.text)
        elif isinstance(message, ScaledOnCpu):
            self.scaled_on_cpu = message.reason
        elif isinstance(message, End):
            self.seconds = float(message.seconds)

    def rows_done(self) -> int:
        """Rows every model of the video has got so far."""
        return min((len(table) for table in self.tables.values()), default=0)

    def result(self) -> VideoResult:
        if self.failed:
            return VideoResult(self.job, failure=self.failure, seconds=self.seconds)
        features = {}
        for model, table in self.tables.items():
            if not len(table):
                return VideoResult(self.job, failure=("decode", f"{model}: no feature rows "
                                                                f"(no frames or clips decoded)"),
                                   seconds=self.seconds)
            features[model] = table.stack()
        return VideoResult(self.job, features, {m: len(f) for m, f in features.items()},
                           warnings=list(self.warnings), seconds=self.seconds,
                           scaled_on_cpu=self.scaled_on_cpu)
