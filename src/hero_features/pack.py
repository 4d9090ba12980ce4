"""Pack ``slowfast_features/`` and ``resnet_features/`` into the video db that HERO trains on.

The layout and encoding follow HERO (linjieli222/HERO), whose writer is
``scripts/convert_videodb.py`` and whose reader is ``VideoFeatLmdb`` in ``data/data.py``:

- ``<db_dir>/resnet_slowfast_<clip_len>`` is an LMDB (``data.mdb``, ``lock.mdb``) keyed by the
  video id encoded as UTF-8. ``<clip_len>`` is written as a Python float (``1.5``, ``2.0``)
  because HERO builds the name as ``f'{feat_version}_{frame_interval}'`` from a float.
- Each value is ``msgpack.dumps({"features": array}, use_bin_type=True)`` with
  msgpack-numpy's encoder, which HERO reads back with ``msgpack.loads(dump, raw=False)``
  after ``msgpack_numpy.patch()``. With ``compress=True`` the value is instead an
  ``np.savez_compressed`` archive and the folder gets a ``_compressed`` suffix, HERO's other
  reader branch. The text dbs' lz4 framing (``TxtLmdb``) is not used for video.
- ``features`` is ``concat(resnet, slowfast)`` along the feature axis (2048 + 2304 = 4352),
  ResNet first, both cut to the shorter of the two row counts, as float32: HERO's converter
  upcasts float16 inputs before concatenating. ``half=True`` keeps float16 instead, which
  the reader accepts too (it upcasts on load) at half the size.
- ``<db_dir>/id2frame_len.json`` maps every key to its row count (the converter's name);
  the same map is also written as ``id2nframe.json``, the name ``VideoFeatLmdb`` opens.
- With ``clip_interval`` (seconds, HERO uses 60 for HowTo100M) every video is cut into
  consecutive sub-clips of ``int(clip_interval / clip_len)`` rows, the last one shorter,
  keyed ``<vid>.0``, ``<vid>.1``, ... with no entry under the bare ``<vid>``.
- Ids whose features could not be packed are listed in ``<db_dir>/corrupted.json``.

Differences from HERO, on purpose: ids are the path relative to the feature folder without
``.npz`` (HERO used the bare file name, so same-named videos in two folders collided); a video
with only a ResNet file is reported too (HERO walked the SlowFast folder only); feature files
are loaded without pickle support and their widths are checked; the db is built beside the
old one and swapped in only when complete, so a failed run leaves the previous db intact.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np

from .atomic import atomic_file, fitted_name
from .errors import HeroFeaturesError, UsageError
from .models import feature_dims
from .sampling import parse_clip_len

__all__ = ["PACKED_MODELS", "PackError", "PackReport", "Problem", "db_name", "pack",
           "rows_per_clip", "run_from_args"]

FEAT_VERSION = "resnet_slowfast"
# Order matters: HERO concatenates (resnet_features, slowfast_features).
PACKED_MODELS = ("resnet", "slowfast")
DEFAULT_CLIP_LEN = Fraction(3, 2)

# One transaction per video keeps a MapFullError retry to that video alone; without per-commit
# fsyncs that costs little, and the finished db is synced once before it is swapped in.
_MIN_MAP_SIZE = 64 << 20


class PackError(HeroFeaturesError, ValueError):
    """The pack cannot start or finish (no feature folders, bad clip interval, disk error):
    exit status 2."""


@dataclass(frozen=True)
class Problem:
    video_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.video_id}: {self.reason}"


@dataclass
class PackReport:
    db_path: Path
    frame_len_path: Path
    entries: dict[str, int] = field(default_factory=dict)
    videos: int = 0
    missing: list[Problem] = field(default_factory=list)
    corrupt: list[Problem] = field(default_factory=list)
    # (video id, resnet rows, slowfast rows) where the two disagree; informational only.
    truncated: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return self.missing + self.corrupt

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"packed {self.videos} videos as {len(self.entries)} entries into {self.db_path}"]
        if self.truncated:
            out.append(f"{len(self.truncated)} videos had different resnet and slowfast row "
                       f"counts and were cut to the shorter")
        out += [f"missing  {p}" for p in self.missing]
        out += [f"corrupt  {p}" for p in self.corrupt]
        return out


def _clip_len(value: Union[str, float, int, Fraction]) -> Fraction:
    try:
        return parse_clip_len(value)
    except ValueError as exc:
        raise PackError(str(exc)) from None


def db_name(clip_len: Union[str, float, Fraction] = DEFAULT_CLIP_LEN,
            compress: bool = False) -> str:
    """HERO's folder name: ``resnet_slowfast_1.5``, ``resnet_slowfast_2.0_compressed``."""
    name = f"{FEAT_VERSION}_{float(_clip_len(clip_len))}"
    return name + "_compressed" if compress else name


def rows_per_clip(clip_interval: Union[int, float],
                  clip_len: Union[str, float, Fraction] = DEFAULT_CLIP_LEN) -> int:
    """HERO's ``int(clip_interval / frame_length)``, computed exactly."""
    seconds = Fraction(repr(clip_interval)) if isinstance(clip_interval, float) \
        else Fraction(clip_interval)
    rows = math.floor(seconds / _clip_len(clip_len))
    if rows < 1:
        raise PackError(f"clip_interval {clip_interval} s is shorter than one feature row "
                        f"({float(_clip_len(clip_len))} s)")
    return rows


def _feature_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if name.endswith(".npz") and not name.startswith("."):
                path = Path(root) / name
                found[path.relative_to(folder).as_posix()[: -len(".npz")]] = path
    return found


def _load(path: Path, dim: int) -> np.ndarray:
    """The (N, dim) feature array of one file; ValueError says why it is unusable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "features" not in archive.files:
                raise ValueError(f"no 'features' array (has {', '.join(archive.files) or 'none'})")
            features = archive["features"]
    except ValueError:
        raise
    except Exception as exc:  # zipfile, OSError, pickle refusal: all mean "cannot be read"
        raise ValueError(f"cannot be read ({type(exc).__name__}: {exc})") from None
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(f"shape {features.shape}, expected (N, {dim})")
    if features.dtype.kind != "f":
        raise ValueError(f"dtype {features.dtype}, expected floating point")
    if len(features) == 0:
        raise ValueError("no feature rows")
    return features


def _encode(features: np.ndarray, compress: bool) -> bytes:
    if compress:
        with io.BytesIO() as buffer:
            np.savez_compressed(buffer, features=features)
            return buffer.getvalue()
    import msgpack
    import msgpack_numpy

    # The encoder HERO installs globally with msgpack_numpy.patch(); passed explicitly so that
    # importing this module does not patch msgpack for everyone else.
    return msgpack.packb({"features": features}, default=msgpack_numpy.encode,
                         use_bin_type=True)


def _split(video_id: str, features: np.ndarray,
           clip_rows: Optional[int]) -> Iterator[tuple[str, np.ndarray]]:
    if clip_rows is None:
        yield video_id, features
        return
    for k, start in enumerate(range(0, len(features), clip_rows)):
        yield f"{video_id}.{k}", features[start:start + clip_rows]


class _Writer:
    def __init__(self, path: Path, map_size: int):
        import lmdb

        self._lmdb = lmdb
        self.errors = lmdb.Error
        self.map_size = max(_MIN_MAP_SIZE, map_size)
        self.env = lmdb.open(str(path), map_size=self.map_size, subdir=True, create=True,
                             sync=False, metasync=False)

    def put_all(self, items: list[tuple[bytes, bytes]]) -> None:
        need = sum(len(k) + len(v) for k, v in items)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except self._lmdb.MapFullError:
                self.map_size = max(self.map_size * 2, self.map_size + 4 * need)
                self.env.set_mapsize(self.map_size)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()


def _write_json(path: Path, data) -> None:
    # ASCII escapes: HERO opens these with the locale's encoding, ASCII in a bare container.
    with atomic_file(path, "w", encoding="ascii") as f:
        json.dump(data, f, ensure_ascii=True, sort_keys=True)


def _swap_in(new: Path, final: Path) -> None:
    old = final.with_name(fitted_name(".", final.name, f".old-{os.getpid()}"))
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    if old.exists():
        shutil.rmtree(old)


def pack(output_dir: Path, db_dir: Path, clip_interval: Optional[int] = None, *,
         clip_len: Union[str, float, Fraction] = DEFAULT_CLIP_LEN, compress: bool = False,
         half: bool = False, log: Optional[Callable[[str], None]] = None) -> PackReport:
    """Build HERO's video db in ``db_dir`` from ``output_dir/{resnet,slowfast}_features``.

    ``clip_interval`` is in seconds, as in HERO's converter (None or -1: whole videos).
    ``clip_len`` is the seconds per feature row the features were extracted with; it names
    the db folder and turns ``clip_interval`` into rows. Videos that cannot be packed are
    listed in the report (and passed to ``log``, default stderr), never raised.
    """
    if log is None:
        def log(line: str) -> None:
            print(line, file=sys.stderr)

    output_dir, db_dir = Path(output_dir), Path(db_dir)
    clip_rows = None if clip_interval in (None, -1) else rows_per_clip(clip_interval, clip_len)
    name = db_name(clip_len, compress)
    dims = feature_dims(PACKED_MODELS)
    folders = {model: output_dir / f"{model}_features" for model in PACKED_MODELS}
    if not any(folder.is_dir() for folder in folders.values()):
        raise PackError(f"neither {folders['slowfast']} nor {folders['resnet']} exists")
    files = {model: _feature_files(folder) for model, folder in folders.items()}
    video_ids = sorted(set(files["resnet"]) | set(files["slowfast"]))

    db_dir.mkdir(parents=True, exist_ok=True)
    report = PackReport(db_path=db_dir / name, frame_len_path=db_dir / "id2frame_len.json")
    tmp_db = db_dir / fitted_name(".", name, f".tmp-{os.getpid()}")
    if tmp_db.exists():
        shutil.rmtree(tmp_db)
    # float16 inputs become float32 values: twice the bytes on disk, plus msgpack framing.
    growth = 1 if half else 2
    estimate = sum(p.stat().st_size for per_model in files.values() for p in per_model.values())
    try:
        writer = _Writer(tmp_db, int(estimate * growth * 1.25) + (16 << 20))
    except Exception as exc:
        raise PackError(f"cannot create the LMDB at {tmp_db}: {exc}") from None

    def problem(kind: list[Problem], video_id: str, reason: str) -> None:
        kind.append(Problem(video_id, reason))
        log(f"{'missing' if kind is report.missing else 'corrupt'}  {video_id}: {reason}")

    try:
        for video_id in video_ids:
            absent = [m for m in PACKED_MODELS if video_id not in files[m]]
            if absent:
                have = next(m for m in PACKED_MODELS if m not in absent)
                problem(report.missing, video_id,
                        f"only {files[have][video_id]}; no {absent[0]}_features file")
                continue
            loaded, errors = {}, []
            for model, dim in dims.items():
                try:
                    loaded[model] = _load(files[model][video_id], dim)
                except ValueError as exc:
                    errors.append(f"{files[model][video_id]} {exc}")
            if errors:
                problem(report.corrupt, video_id, "; ".join(errors))
                continue
            try:
                video_id.encode("utf-8")
            except UnicodeEncodeError:
                problem(report.corrupt, video_id, "the file name is not valid UTF-8")
                continue
            resnet, slowfast = loaded["resnet"], loaded["slowfast"]
            rows = min(len(resnet), len(slowfast))
            if len(resnet) != len(slowfast):
                report.truncated.append((video_id, len(resnet), len(slowfast)))
            dtype = np.float16 if half else np.float32
            features = np.concatenate((resnet[:rows].astype(dtype, copy=False),
                                       slowfast[:rows].astype(dtype, copy=False)), axis=1)
            items, lengths = [], {}
            for key, part in _split(video_id, features, clip_rows):
                items.append((key.encode("utf-8"), _encode(np.ascontiguousarray(part), compress)))
                lengths[key] = len(part)
            writer.put_all(items)
            report.entries.update(lengths)
            report.videos += 1
        writer.close()
    except BaseException as exc:
        try:
            writer.env.close()
        finally:
            shutil.rmtree(tmp_db, ignore_errors=True)
        if isinstance(exc, (OSError, writer.errors)):
            raise PackError(f"writing {report.db_path} failed: {exc}") from exc
        raise

    _swap_in(tmp_db, report.db_path)
    _write_json(report.frame_len_path, report.entries)
    _write_json(db_dir / "id2nframe.json", report.entries)
    corrupted = db_dir / "corrupted.json"
    if report.problems:
        _write_json(corrupted, sorted({p.video_id for p in report.problems}))
    elif corrupted.exists():
        corrupted.unlink()
    return report


EXTRA_MODULES = ("lmdb", "msgpack", "msgpack_numpy")  # what the `pack` extra installs


def missing_extras() -> list[str]:
    """The modules of the `pack` extra that cannot be imported here."""
    import importlib.util

    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def run_from_args(args) -> int:
    """``hero-features pack``: 0 all packed, 1 some videos left out; PackError (exit 2) when it
    could not run."""
    missing = missing_extras()
    if missing:  # before anything is created: no empty video_db/ left behind
        raise UsageError(f"pack needs {', '.join(missing)}, which the 'pack' extra installs: "
                         f"pip install 'hero-features[pack]' (from a checkout: pip install "
                         f"'.[pack]')")
    db_dir = args.db_dir if args.db_dir is not None else Path(args.output_dir) / "video_db"
    try:
        report = pack(args.output_dir, db_dir, args.clip_interval,
                      clip_len=getattr(args, "clip_len", DEFAULT_CLIP_LEN),
                      compress=getattr(args, "compress", False),
                      half=getattr(args, "fp16", False))
    except OSError as exc:
        raise PackError(str(exc)) from None
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
