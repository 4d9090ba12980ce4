"""Files that readers see whole or not at all: written to a hidden temporary name next to the
final one, flushed to disk, renamed into place. Every file hero-features writes for others
to read (features, csv manifests, pack's json maps) goes through `atomic_file`.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

NAME_MAX = 255  # bytes in one file name on Linux file systems (ext4, xfs, btrfs, tmpfs, NFS)


def fitted_name(prefix: str, name: str, suffix: str, limit: int = NAME_MAX) -> str:
    """prefix + name + suffix, with `name` shortened (from its end, on a character boundary)
    so that the whole fits in `limit` bytes: a temporary name must never be what makes a
    write fail. Names that are not UTF-8 keep their bytes (surrogateescape)."""
    room = limit - len(os.fsencode(prefix + suffix))
    encoded = os.fsencode(name)
    if len(encoded) <= room:
        return prefix + name + suffix
    cut = encoded[:room - 1]  # one byte left for the "~" that marks the cut
    try:
        name.encode("utf-8")
        short = cut.decode("utf-8", "ignore")  # drops a character cut in half
    except UnicodeEncodeError:  # not UTF-8 to begin with: the bytes stay as they are
        short = os.fsdecode(cut)
    return prefix + short + "~" + suffix


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique temporary name next to `path`, within the file-name limit."""
    path = Path(path)
    return path.with_name(fitted_name(".", path.name,
                                      f".{os.getpid()}.{secrets.token_hex(4)}.tmp"))


@contextmanager
def atomic_file(path: Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """`open(path, mode)` as readers will only ever see it whole: the file yielded is a
    temporary sibling, fsync'd and renamed over `path` when the block ends without an
    error, removed when it raises. A run killed mid-write leaves only a hidden
    `.<name>.<pid>.<random>.tmp`, which nothing counts as an output."""
    path = Path(path)
    temporary = temporary_sibling(path)
    # Not mkstemp: its 0600 would make every output unreadable to the rest of a group that
    # shares them; 0666 less the umask is what a plain open gives.
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself reaches the disk only with its directory: without this, a power cut
    # can lose a file the run already counted (never leave a partial one, though).
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
