"""Atomic feature files, the failure log, and the run summary."""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAILURE_LOG = "failed.jsonl"


def write_features(path: Path, features: np.ndarray) -> None:
    """np.savez(path, features=...) written to a temporary name in the same folder, flushed
    to disk and renamed, so a crash never leaves a partial .npz under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, features=np.ascontiguousarray(features))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class FailureLog:
    """Append-only JSON lines: one per failed (video, model), never truncated between runs."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / FAILURE_LOG
        self._lock = threading.Lock()
        self.count = 0

    def record(self, video_path, model: str, stage: str, error: str) -> None:
        line = json.dumps({"video_path": str(video_path), "model": model, "stage": stage,
                           "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                          ensure_ascii=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            self.count += 1


@dataclass
class Summary:
    videos: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    video_seconds: float = 0.0
    rows: dict = field(default_factory=dict)  # model -> feature rows written
    model_seconds: dict = field(default_factory=dict)  # model -> seconds spent in its forward
    started: float = field(default_factory=time.monotonic)

    def lines(self) -> list[str]:
        wall = max(time.monotonic() - self.started, 1e-9)
        out = [f"videos: {self.done} done, {self.skipped} skipped (already complete), "
               f"{self.failed} failed, of {self.videos}",
               f"video time: {self.video_seconds / 3600:.3f} h in {wall:.1f} s "
               f"({self.video_seconds / wall:.1f} video-s/s)"]
        for model, rows in sorted(self.rows.items()):
            busy = self.model_seconds.get(model, 0.0)
            rate = f", {rows / busy:.1f} rows/s while running" if busy > 0 else ""
            out.append(f"  {model}: {rows} feature rows, {busy:.1f} s in the model{rate}")
        return out
