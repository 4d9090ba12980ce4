"""--shard K/N: a video belongs to shard blake2b(key) mod N, the key being the video path as
the csv writes it (relative to --video_path in folder mode). Membership depends on the video
alone, so re-sorting or appending to a csv never moves an earlier video (docs/scaling.md).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional

from .config import Job


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), shards numbered 0..N-1 as SLURM_ARRAY_TASK_ID is with --array=0-(N-1)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard wants K/N (e.g. 3/16), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: K must be 0..N-1 (shards are numbered from 0)")
    return index, count


def shard_of(key: str, count: int) -> int:
    # Python's hash() is salted per process; a digest is the same on every run and machine.
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_key(job: Job, root: Optional[Path] = None) -> str:
    """The csv's video path as written; in folder mode the path below the folder, so nodes that
    mount the corpus at different places still agree."""
    path = Path(job.video_path)
    if root is not None:
        path = path.relative_to(root)
    return path.as_posix()


def select_shard(jobs: Iterable[Job], index: int, count: int,
                 root: Optional[Path] = None) -> list[Job]:
    """The jobs of shard `index` of `count`, in their order."""
    return [job for job in jobs if shard_of(shard_key(job, root), count) == index]
