"""What an extraction may write, checked before anything is decoded.

An output path that a csv names (or that a video folder's layout gives) must not replace
anything that is not a features file: not a video of the run, not a file of some other
program, not a folder. Two rows must not share an output, outputs stay inside --output_dir
unless the user opts out, and every file name must fit the file system. docs/reliability.md
lists the cases and what is done with each.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .manifest import is_features_file
from .atomic import NAME_MAX

SHOWN = 5  # problems named in the one-line refusal


@dataclass(frozen=True)
class Planned:
    """One row of a plan: a video and, per model, the output it would write."""

    line: int  # the csv line (0 in folder mode)
    video: Path
    outputs: dict  # model id -> Path written
    named: Optional[dict] = None  # model id -> the path as the csv gave it (before .npz)


def npz_path(path: Path) -> Path:
    """The file np.savez(path, ...) writes: `.npz` appended unless the name already ends
    with it (case-sensitively, as numpy does), which the reference relied on."""
    text = os.fspath(path)
    return Path(text if text.endswith(".npz") else text + ".npz")


def _key(path: Path) -> str:
    # Lexical: `..` is resolved on the text, symlinks are not (a link inside --output_dir to
    # another disk is the user's own layout, not an escape).
    return os.path.normcase(os.path.abspath(path))


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def name_too_long(path: Path, limit: int = NAME_MAX) -> Optional[str]:
    """The first component of `path` over `limit` bytes, if any."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > limit:
            return part
    return None


def existing_problem(path: Path) -> Optional[str]:
    """Why an existing `path` must not be replaced by an output; None when nothing is there,
    a dangling link, or a features file (manifest.is_features_file: whole or cut short)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None  # nothing there (a dangling link is replaced, its target untouched)
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not stat.S_ISREG(mode):
        return "exists and is not a regular file"
    if not is_features_file(path):
        return "exists and is not a features file (a .npz of `features` alone)"
    return None


def inside(path: Path, folder: Path) -> bool:
    path_key, folder_key = _key(path), _key(folder)
    return os.path.commonpath([path_key, folder_key]) == folder_key and path_key != folder_key


def check_csv_plan(plan: Sequence[Planned], output_dir: Path,
                   allow_outside: bool) -> list[str]:
    """Every reason the csv's plan cannot run, each naming its csv line(s); [] when none."""
    problems: list[str] = []
    videos: dict[str, int] = {}
    video_ids: dict[tuple[int, int], int] = {}
    for row in plan:
        videos.setdefault(_key(row.video), row.line)
        identity = _identity(row.video)
        if identity is not None:
            video_ids.setdefault(identity, row.line)
    owners: dict[str, Planned] = {}
    outside: list[int] = []
    for row in plan:
        for model, path in row.outputs.items():
            # The path as written too: `.npz` appended, a csv naming a video or /etc/passwd
            # would write next to it, but such a csv is never what was meant.
            named = (row.named or {}).get(model, path)
            long_part = name_too_long(path)
            if long_part is not None:
                problems.append(f"line {row.line}: the name {long_part[:40]}... is "
                                f"{len(os.fsencode(long_part))} bytes, over the file "
                                f"system's {NAME_MAX}-byte limit")
                continue
            problem = None
            for candidate in dict.fromkeys([named, path]):
                problem = _replaces(candidate, row, videos, video_ids)
                if problem:
                    break
            if problem:
                problems.append(problem)
                continue
            key = _key(path)
            owner = owners.setdefault(key, row)
            if owner is not row and owner.video != row.video:
                problems.append(f"lines {owner.line} and {row.line} write the same feature "
                                f"path {path}")
                continue
            if not allow_outside and not inside(path, output_dir):
                outside.append(row.line)
    if outside:
        lines = ", ".join(map(str, outside[:SHOWN])) + (" ..." if len(outside) > SHOWN else "")
        problems.append(f"{len(outside)} feature path(s) lie outside --output_dir "
                        f"{output_dir} (line {lines}); pass --allow_outside_output_dir to "
                        f"write there")
    return problems


def _replaces(path: Path, row: Planned, videos: dict, video_ids: dict) -> Optional[str]:
    """Why writing `path` would replace something not ours: a video of the csv, or an
    existing file that is not a features file."""
    identity = _identity(path)
    video_line = videos.get(_key(path)) or (video_ids.get(identity) if identity else None)
    if video_line is not None:
        which = "its own video" if video_line == row.line else f"the video of line {video_line}"
        return f"line {row.line}: the feature path {path} is {which}"
    why = existing_problem(path)
    if why is not None:
        return f"line {row.line}: the feature path {path} {why}; it is not overwritten"
    return None


def one_line(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return shown + more


def folder_plan_problems(plan: Iterable[Planned]) -> list[tuple[Planned, str]]:
    """(row, reason) for each video of a folder run whose output cannot be written: its
    name does not fit the file system, or something that is not a features file is in its
    place. These videos are logged as failed; the others run."""
    refused = []
    for row in plan:
        for path in row.outputs.values():
            long_part = name_too_long(path)
            if long_part is not None:
                refused.append((row, f"the output name {Path(path).name} is "
                                     f"{len(os.fsencode(long_part))} bytes, over the file "
                                     f"system's {NAME_MAX}-byte limit; rename the video"))
                break
            why = existing_problem(path)
            if why is not None:
                refused.append((row, f"{path} {why}; it is not overwritten"))
                break
    return refused
