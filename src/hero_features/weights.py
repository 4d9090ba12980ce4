"""Where a checkpoint comes from and how it is verified; no torch (`hero-features models` and
`download` run without it). Reading a checkpoint into a model is state_dicts.py.

Look-up order for a file under its ORIGINAL name: --checkpoint, --weights_dir,
$HERO_FEATURES_WEIGHTS, /models (the Docker image), then the user cache. A file found nowhere
is downloaded into the cache (or --weights_dir) with a progress bar, resumed if a partial
download exists, and verified against the published sha256 before it is renamed into place.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Optional

from tqdm import tqdm

from .errors import WeightsError
from .models.spec import Checkpoint

ENV_WEIGHTS = "HERO_FEATURES_WEIGHTS"
DOCKER_WEIGHTS = Path("/models")


class CheckpointMismatch(WeightsError, ValueError):
    """A checkpoint whose tensors do not fit the model. Also a ValueError, which the model
    loaders raise for every other kind of wrong file, so callers need not tell them apart."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hero-features"


def search_dirs(weights_dir: Optional[Path] = None) -> list[Path]:
    dirs = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    if os.environ.get(ENV_WEIGHTS):
        dirs.append(Path(os.environ[ENV_WEIGHTS]))
    dirs += [DOCKER_WEIGHTS, cache_dir()]
    return dirs


def find_checkpoint(ckpt: Checkpoint, weights_dir: Optional[Path] = None) -> Optional[Path]:
    for folder in search_dirs(weights_dir):
        candidate = folder / ckpt.filename
        if candidate.is_file():
            return candidate
    return None


def resolve_checkpoint(ckpt: Checkpoint, weights_dir: Optional[Path] = None,
                       explicit: Optional[Path] = None, download: bool = True) -> Path:
    """The local path of `ckpt`, downloading it if it is found nowhere."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise WeightsError(f"checkpoint file {explicit} does not exist")
        return Path(explicit)
    found = find_checkpoint(ckpt, weights_dir)
    if found is not None:
        return found
    target_dir = Path(weights_dir) if weights_dir else cache_dir()
    if not download:
        raise WeightsError(_missing_message(ckpt, weights_dir, "downloads are disabled"))
    return download_checkpoint(ckpt, target_dir, weights_dir)


def _missing_message(ckpt: Checkpoint, weights_dir: Optional[Path], why: str) -> str:
    looked = ", ".join(str(d) for d in search_dirs(weights_dir))
    fetch = ckpt.missing_hint or f"Fetch it from {ckpt.url}"
    return (f"checkpoint {ckpt.filename} not found (looked in {looked}) and it could not be "
            f"downloaded ({why}). {fetch} and put it in one of those folders, "
            f"e.g. --weights_dir DIR or ${ENV_WEIGHTS}=DIR.")


class MissingCheckpoints(WeightsError):
    """Several checkpoints that could not be found or fetched, all named in one message."""


def resolve_all(ckpts: Mapping[str, Checkpoint], weights_dir: Optional[Path] = None,
                explicit: Optional[Path] = None, download: bool = True) -> dict[str, Path]:
    """resolve_checkpoint for every model (name -> Checkpoint), going on past a missing one so
    that one error names them all: otherwise the next one only shows up once the first is
    found."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    for name, ckpt in ckpts.items():
        try:
            found[name] = resolve_checkpoint(ckpt, weights_dir, explicit, download)
        except WeightsError as exc:
            problems.append(f"{name}: {exc}")
    if len(problems) == 1:
        raise WeightsError(problems[0])
    if problems:
        raise MissingCheckpoints(f"{len(problems)} checkpoints are missing:\n  " +
                                 "\n  ".join(problems))
    return found


def resolve_checkpoints(config) -> dict[str, Path]:
    """Every model's checkpoint of a run (config.RunConfig), found or fetched, before any
    worker starts: N workers fetching the same missing file would write the same .part."""
    from .models import get_spec

    return {name: resolve_checkpoint(get_spec(name).checkpoint, config.weights_dir,
                                     config.checkpoint, download=config.download)
            for name in config.models}


# (path, size, mtime, inode) -> verify(); a run hashes each file once, however many times a
# command in the same process asks (the tests call the CLI in-process over and over).
_VERIFIED: dict[tuple, Optional[bool]] = {}


def verify_cached(path: Path, ckpt: Checkpoint) -> Optional[bool]:
    if not ckpt.sha256:
        return None
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, ckpt.sha256)
    if key not in _VERIFIED:
        _VERIFIED[key] = verify(path, ckpt)
    return _VERIFIED[key]


def mismatch_warning(found: Mapping[str, tuple[Path, Checkpoint]]) -> Optional[str]:
    """A loud warning naming every file (model -> (path, checkpoint)) under an official name
    whose sha256 is not the published one, or None when all match or publish no hash."""
    bad = [f"{name}: {path}" for name, (path, ckpt) in found.items()
           if verify_cached(path, ckpt) is False]
    if not bad:
        return None
    return ("WARNING: HASH MISMATCH: these checkpoints carry an official file name but are not "
            "the published files, so their features will NOT match the released ones: " +
            "; ".join(bad) + ". Delete them and run `hero-features download` for the published "
            "files (or ignore this if you meant to use your own weights).")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SHA256_SEEN: dict[tuple, str] = {}


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, hashed once per process for each version of the file
    (path, size, mtime): a 300 MB checkpoint takes about a second, and every output of a
    run records it."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = sha256_of(path)
    return _SHA256_SEEN[key]


def verify(path: Path, ckpt: Checkpoint) -> Optional[bool]:
    """True/False against the published hash (a published prefix, as torchvision's file names
    carry, is compared as a prefix); None when no hash is published."""
    if not ckpt.sha256:
        return None
    return sha256_of(path).startswith(ckpt.sha256.lower())


def download_checkpoint(ckpt: Checkpoint, target_dir: Path,
                        weights_dir: Optional[Path] = None, timeout: float = 30.0) -> Path:
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(_missing_message(ckpt, weights_dir, f"cannot create {target_dir}: "
                                                               f"{exc}")) from None
    final = target_dir / ckpt.filename
    with _download_lock(target_dir / (ckpt.filename + ".lock"), ckpt.filename):
        if final.is_file():  # another process finished it while we waited
            return final
        return _download_locked(ckpt, final, weights_dir, timeout)


@contextlib.contextmanager
def _download_lock(path: Path, name: str):
    """One downloader per file: runs that share a download folder (array-job shards on one
    node, several users of one cache) start together and would otherwise append to the same
    .part. The lock file is left in place: removing it would let a third process lock a new
    file while a second one still waits on the old."""
    try:
        handle = open(path, "a+b")
    except OSError as exc:
        raise WeightsError(f"cannot download {name}: cannot write {path}: "
                           f"{exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process downloading {name}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_locked(ckpt: Checkpoint, final: Path, weights_dir: Optional[Path],
                     timeout: float) -> Path:
    partial = final.with_name(ckpt.filename + ".part")
    if not _fetch(ckpt, partial, weights_dir, timeout):
        # The server cannot continue this .part (it ignores or rejects its resume point).
        partial.unlink(missing_ok=True)
        if not _fetch(ckpt, partial, weights_dir, timeout):
            raise WeightsError(f"{ckpt.url} answered a whole-file request with a partial "
                               f"response; cannot download {ckpt.filename}")
    if verify(partial, ckpt) is False:
        bad = partial.with_suffix(".corrupt")
        shutil.move(partial, bad)
        raise WeightsError(f"{ckpt.filename} from {ckpt.url} does not match its published "
                           f"sha256 {ckpt.sha256}; kept as {bad}")
    os.replace(partial, final)
    return final


def install_checkpoint(ckpt: Checkpoint, source_dir: Path, target_dir: Path) -> Path:
    """`source_dir/<original name>` copied into `target_dir` once it passes its published
    sha256 (for machines without internet: `hero-features download --from DIR`). A file the
    target already holds is left alone when it has the same bytes, else refused by name."""
    source = Path(source_dir) / ckpt.filename
    final = Path(target_dir) / ckpt.filename
    if not source.is_file():
        raise WeightsError(f"{ckpt.filename} is not in {source_dir}")
    if verify(source, ckpt) is False:
        raise WeightsError(f"{source} does not match the published sha256 {ckpt.sha256}: not "
                           f"installed (features made with it would not match the released "
                           f"ones)")
    if final.is_file():
        if final.resolve() == source.resolve() or sha256_of(final) == sha256_of(source):
            return final
        raise WeightsError(f"{final} already exists and differs from {source}; remove it "
                           f"first to install this one")
    try:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        partial = final.with_name(ckpt.filename + ".part")
        shutil.copyfile(source, partial)
        os.replace(partial, final)
    except OSError as exc:
        raise WeightsError(f"cannot install {ckpt.filename} into {target_dir}: "
                           f"{exc.strerror or exc}") from None
    return final


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of a Content-Range header; None where absent or '*'."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first is not None else None,
            int(total) if total not in (None, "*") else None)


def _fetch(ckpt: Checkpoint, partial: Path, weights_dir: Optional[Path],
           timeout: float) -> bool:
    """Bring `partial` up to the whole file, continuing from its current size.

    False when the server will not continue from there, so the caller starts over. A transfer
    that ends early raises and keeps the .part for the next run: urllib returns a short body
    without complaint when the connection drops, so the byte count is checked here.
    """
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(ckpt.url, headers={"User-Agent": "hero-features"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            # Nothing left past our size: the .part is already whole when its size is the
            # file's (a run stopped between the last byte and the rename).
            return _content_range(exc.headers.get("Content-Range"))[1] == have
        raise WeightsError(_missing_message(ckpt, weights_dir, str(exc))) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise WeightsError(_missing_message(ckpt, weights_dir, str(exc))) from None
    with response:
        resumed = response.status == 206
        if resumed:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != have:
                return False
        else:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = have if resumed else 0
        with open(partial, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=received, unit="B", unit_scale=True,
                desc=f"downloading {ckpt.filename}") as bar:
            try:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise WeightsError(f"download of {ckpt.url} interrupted ({exc}); rerun to "
                                   f"resume from {partial}") from None
    if total is not None and received < total:
        raise WeightsError(f"download of {ckpt.url} stopped at {received} of {total} bytes; "
                           f"rerun to resume from {partial}")
    return True


def short_reason(exc: BaseException) -> str:
    """One line of a loader's error: torch's refusals span many lines and end by advising
    weights_only=False; the line naming the refused GLOBAL is the one that matters."""
    text = str(exc).splitlines() or [type(exc).__name__]
    return next((line.strip() for line in text if "GLOBAL" in line), text[0])
