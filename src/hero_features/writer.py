"""Finished videos onto the disk: each model's features written atomically (outputs.py), then
the result handed on (to the reporter, or to the --gpus parent) without its features.

`OutputWriter` writes on a background thread so that the device keeps working while a
video's files are fsync'd; a disk that cannot take more (full, read-only, over quota) stops
the run at the next result handed to it.
"""
from __future__ import annotations

import errno
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Hashable, Optional

from .assembler import VideoResult
from .outputs import write_features

# Write errors after which no other output can land either: the run stops.
FATAL_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def write_result(result: VideoResult,
                 records: Optional[dict] = None) -> tuple[VideoResult, Optional[OSError]]:
    """Write every model's file of a finished video: the result without its features, or
    failed at stage "write" when a file cannot be written; and the error when it is one
    after which nothing else can be written either (FATAL_ERRNOS), else None."""
    if not result.ok:
        return result, None
    try:
        for model, path in result.job.outputs.items():
            write_features(Path(path), result.features[model], (records or {}).get(model))
    except OSError as exc:
        failed = result.failed("write", f"{type(exc).__name__}: {exc}")
        return failed, exc if exc.errno in FATAL_ERRNOS else None
    return result.without_features(), None


class OutputWriter:
    """write_result on one background thread, each result then handed to `deliver(result,
    key)` (failed videos too, in order)."""

    def __init__(self, deliver: Callable[[VideoResult, Hashable], None],
                 records: Optional[dict] = None):
        self.deliver = deliver
        self.records = records or {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._fatal: Optional[BaseException] = None

    def submit(self, result: VideoResult, key: Hashable = None) -> None:
        self.check()
        self._thread.submit(self._write, result, key)

    def check(self) -> None:
        """Raise the error that stopped writing, if any."""
        if self._fatal is not None:
            raise self._fatal

    def close(self) -> None:
        """Wait for every submitted result to be written and delivered."""
        self._thread.shutdown(wait=True)

    def _write(self, result: VideoResult, key: Hashable) -> None:
        try:
            written, fatal = write_result(result, self.records)
            if fatal is not None:  # disk full / read-only: nothing else can land, stop the run
                self._fatal = fatal
            self.deliver(written, key)
        except BaseException as exc:  # a bug here must stop the run, not vanish in the thread
            self._fatal = exc
