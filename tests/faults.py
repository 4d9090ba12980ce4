"""Decodes that stall on cue, for runs whose timing a test must control.

Module-level functions with producer.decode_video_units's arguments, passed as DecodePool's
decode_fn: spawned decode workers import them by name (the parent's sys.path travels with the spawn).
Which video stalls, and the files that signal it, come from environment variables that the
test sets and the workers inherit; nothing here is part of the package.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from hero_features.producer import decode_video_units

# "<video file name>:<flag file>": that video's decode writes the flag file, then blocks for
# good; the run holding it cannot finish and must be stopped from outside.
GATE_ENV = "HERO_TEST_GATE"
# "<video file name>:<flag file>:<release file>": that video's decode writes the flag file,
# then waits, producing nothing, until the release file exists; then it decodes normally.
STALL_ENV = "HERO_TEST_STALL"


def _setting(variable: str) -> list[str]:
    return os.environ.get(variable, "").split(":")


def gated_decode(video_id, path, groups, settings, active=None):
    name, flag = (_setting(GATE_ENV) + [""])[:2]
    if name and Path(path).name == name:
        Path(flag).write_text(str(path))
        read_end, _write_end = os.pipe()
        os.read(read_end, 1)  # nobody ever writes: blocks until the worker is killed
    yield from decode_video_units(video_id, path, groups, settings, active)


def stalling_decode(video_id, path, groups, settings, active=None):
    name, flag, release = (_setting(STALL_ENV) + ["", ""])[:3]
    if name and Path(path).name == name:
        Path(flag).write_text(str(path))
        while not Path(release).exists():  # waiting on a file: nothing to outrun
            time.sleep(0.02)
    yield from decode_video_units(video_id, path, groups, settings, active)
