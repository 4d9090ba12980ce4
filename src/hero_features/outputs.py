"""Atomic feature files and the record of what made them, the failure log, the run summary."""
from __future__ import annotations

import errno
import json
import os
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .atomic import atomic_file

FAILURE_LOG = "failed.jsonl"

# The record of what made an output is the zip archive's comment: np.load, HERO's loaders
# and compare.py read only the `features` member and never see it, it is renamed into place
# together with the features (it can never describe another file's settings), and
# manifest.is_complete reads it with the zip directory it opens anyway. See
# docs/reliability.md ("What made an output").
RECORD_MAGIC = b"hero-features record 1\n"
# Fields that say which features a file holds; a record that differs in one of them was made
# with other settings. The package version is kept for provenance only.
RECORD_SETTINGS = ("model", "clip_len", "checkpoint_sha256", "precision", "target_fps",
                   "min_num_features")
# Zip entries carry a modification time; a fixed one (the zip epoch) makes two runs with the
# same settings write byte-identical files. The file's own mtime still says when.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZIP_EPOCH_DOS = bytes([0, 0, 0x21, 0])  # DOS time 00:00:00, date 1980-01-01, little-endian


def make_record(model: str, clip_len, checkpoint_sha256: str, precision: str, *,
                clip_model: bool, target_fps: int = 30, min_num_features: int = 1) -> dict:
    """What made an output: every setting that changes its features, and the version."""
    from . import __version__

    record = {"model": model, "clip_len": str(clip_len),
              "checkpoint_sha256": checkpoint_sha256, "precision": precision,
              "hero_features": __version__}
    if clip_model:  # the frame models (resnet, clip) never look at these
        record.update(target_fps=int(target_fps), min_num_features=int(min_num_features))
    return record


def record_differences(found: Mapping, expected: Mapping) -> list[str]:
    """The settings in which an output's record differs from this run's, e.g.
    ['clip_len 2 (now 3/2)']; [] when it was made with the same settings."""
    return [f"{key} {found.get(key, 'unset')} (now {expected.get(key, 'unset')})"
            for key in RECORD_SETTINGS if found.get(key) != expected.get(key)]


def _record_bytes(record: Optional[Mapping]) -> bytes:
    if record is None:
        return b""
    return RECORD_MAGIC + json.dumps(dict(record), sort_keys=True,
                                     separators=(",", ":")).encode("ascii")


def record_from_comment(comment: bytes) -> Optional[dict]:
    if not comment.startswith(RECORD_MAGIC):
        return None
    try:
        record = json.loads(comment[len(RECORD_MAGIC):].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_record(path: Path) -> Optional[dict]:
    """The record of what made the output at `path` (model, clip_len, checkpoint_sha256,
    precision, hero_features version, and target_fps / min_num_features for the clip
    models), or None: no record (written by the reference or a version before records),
    not a zip, or unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            return record_from_comment(archive.comment)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def _seal(f, record: Optional[Mapping]) -> None:
    """Give the npz np.savez just wrote into `f` fixed entry times and the record."""
    f.seek(0)
    with zipfile.ZipFile(f, "a") as archive:
        for info in archive.infolist():
            info.date_time = _ZIP_EPOCH  # the central directory's copy, rewritten on close
            f.seek(info.header_offset + 10)  # the local header's copy (APPNOTE 4.3.7)
            f.write(_ZIP_EPOCH_DOS)
        archive.comment = _record_bytes(record)  # marks the archive modified: rewritten


def write_features(path: Path, features: np.ndarray, record: Optional[Mapping] = None) -> None:
    """np.savez(path, features=...) written atomically (atomic.atomic_file) and sealed with
    `record` (see read_record): a crash never leaves a partial .npz under the final name
    (manifest.is_complete wants the final `.npz` name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w+b") as f:
        np.savez(f, features=np.ascontiguousarray(features))
        _seal(f, record)


def ensure_writable_dir(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, or raise OSError saying why:
    run before the models load, so a bad --output_dir costs seconds, not a failed run."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder", str(folder))
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

    def record(self, video_path, model: str, stage: str, error: str) -> None:
        self._append(video_path, model, stage, error, "error")

    def warn(self, video_path, model: str, stage: str, message: str) -> None:
        self._append(video_path, model, stage, message, "warning")

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
    # --scale-on device: why videos were scaled by the CPU graph instead -> how many
    scaled_on_cpu: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    shard: str = ""  # "K/N" with --shard: named in the summary, so job-array logs say which
    allocator: str = ""  # the malloc the run's process uses (allocator.describe)

    def lines(self) -> list[str]:
        wall = max(time.monotonic() - self.started, 1e-9)
        which = f" (shard {self.shard})" if self.shard else ""
        out = [f"videos{which}: {self.done} done, {self.skipped} skipped (already complete), "
               f"{self.failed} failed, of {self.videos}",
               f"video time: {self.video_seconds / 3600:.3f} h in {wall:.1f} s "
               f"({self.video_seconds / wall:.1f} video-s/s)"]
        if self.warned:
            out.insert(1, f"  {self.warned} of the done came from damaged streams (warning "
                          f"lines in the failure log)")
        if self.scaled_on_cpu:
            count = sum(self.scaled_on_cpu.values())
            why = "; ".join(f"{reason} ({n})" for reason, n in sorted(self.scaled_on_cpu.items()))
            out.insert(1, f"  {count} of the done were scaled on the CPU, not the device "
                          f"(same features): {why}")
        for model, rows in sorted(self.rows.items()):
            busy = self.model_seconds.get(model, 0.0)
            rate = f", {rows / busy:.1f} rows/s while running" if busy > 0 else ""
            out.append(f"  {model}: {rows} feature rows, {busy:.1f} s in the model{rate}")
        if self.allocator:
            out.append(f"allocator: {self.allocator}")
        return out
