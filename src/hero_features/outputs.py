"""Atomic feature files, the failure log, and the run summary."""
from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAILURE_LOG = "failed.jsonl"


def write_features(path: Path, features: np.ndarray) -> None:
    """np.savez(path, features=...) written to a temporary name in the same folder, flushed
    to disk and renamed, so a crash never leaves a partial .npz under the final name.

    A run killed mid-write leaves only a hidden `.<name>.<random>.tmp`, which nothing counts
    as an output (manifest.is_complete wants the final `.npz` name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # Not mkstemp: its 0600 would make every output unreadable to the rest of a group that
    # shares the features; 0666 less the umask is what a plain np.savez gives.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself reaches the disk only with its directory: without this, a power cut
    # can lose an output the run already counted (never leave a partial one, though).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the data itself is on disk
    finally:
        os.close(fd)


def ensure_writable_dir(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, or raise OSError saying why:
    run before the models load, so a bad --output_dir costs seconds, not a failed run."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".hero-features-write-test.{os.getpid()}.{secrets.token_hex(4)}"
    with open(probe, "wb") as f:
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())
    probe.unlink()


class FailureLog:
    """Append-only JSON lines, never truncated between runs: one per failed (video, model),
    `"severity": "error"`, and one per video that got features from a damaged stream,
    `"severity": "warning"` (its features exist; nothing to redo)."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / FAILURE_LOG
        self._lock = threading.Lock()
        self.count = 0
        self.warnings = 0

    def record(self, video_path, model: str, stage: str, error: str) -> None:
        self._append(video_path, model, stage, error, "error")
        self.count += 1

    def warn(self, video_path, model: str, stage: str, message: str) -> None:
        self._append(video_path, model, stage, message, "warning")
        self.warnings += 1

    def _append(self, video_path, model: str, stage: str, message: str, severity: str) -> None:
        entry = {"video_path": str(video_path), "model": model, "stage": stage,
                 "error": message, "severity": severity,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        line = json.dumps(entry, ensure_ascii=False)
        try:
            data = (line + "\n").encode("utf-8")
        except UnicodeEncodeError:
            # A file name that is not UTF-8 (kept by Python as lone surrogates): \u escapes
            # keep the line valid JSON, and json.loads gives back the same str, which
            # os.fsencode turns into the original bytes.
            data = (json.dumps(entry) + "\n").encode("ascii")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write of a whole line in append mode: concurrent writers (several devices
            # share one log) never interleave within a line.
            with open(self.path, "ab") as f:
                f.write(data)


@dataclass
class Summary:
    videos: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    warned: int = 0  # of the done: features from a damaged stream, a warning line logged
    video_seconds: float = 0.0
    rows: dict = field(default_factory=dict)  # model -> feature rows written
    model_seconds: dict = field(default_factory=dict)  # model -> seconds spent in its forward
    started: float = field(default_factory=time.monotonic)
    allocator: str = ""  # the malloc the run's process uses (allocator.describe)

    def lines(self) -> list[str]:
        wall = max(time.monotonic() - self.started, 1e-9)
        out = [f"videos: {self.done} done, {self.skipped} skipped (already complete), "
               f"{self.failed} failed, of {self.videos}",
               f"video time: {self.video_seconds / 3600:.3f} h in {wall:.1f} s "
               f"({self.video_seconds / wall:.1f} video-s/s)"]
        if self.warned:
            out.insert(1, f"  {self.warned} of the done came from damaged streams (warning "
                          f"lines in the failure log)")
        for model, rows in sorted(self.rows.items()):
            busy = self.model_seconds.get(model, 0.0)
            rate = f", {rows / busy:.1f} rows/s while running" if busy > 0 else ""
            out.append(f"  {model}: {rows} feature rows, {busy:.1f} s in the model{rate}")
        if self.allocator:
            out.append(f"allocator: {self.allocator}")
        return out
