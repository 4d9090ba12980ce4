"""Gather videos into per-model csv manifests, read manifests back, and tell finished outputs.

Layout: ``OUT/<model>_features/<video path relative to the video root, extension -> .npz>``,
and ``OUT/csv/<model>_info.csv`` with the header ``video_path,feature_path``.

Differences from the reference's ``gather_video_paths.py`` (its flat names, unquoted csv):

- Sub-folders are mirrored instead of flattened, and any two videos that still share an
  output (``a/x.mp4`` and ``a/x.webm``) stop the gather with an error naming both, before
  anything is written.
- Every common FFmpeg container is collected (``.mkv``, ``.m4v``, ``.ts`` ... too).
- Rows are sorted, so two gathers of the same tree give the same csv.
- Entries whose name starts with ``.`` are skipped, at any depth below the root: macOS
  writes ``._clip.mp4`` AppleDouble files next to every video on non-Apple disks, which have
  a video extension but are not videos; hidden folders (``.git``, ``.Trash-1000``,
  ``.cache``) hold no corpus videos either.
- Symlinks to files are collected; symlinks to directories are not followed (no loops, no
  videos counted twice), like ``os.walk``, but they are reported (``skipped``), so the
  command line can list them instead of dropping their videos unsaid. Anything else with a
  video name (a dangling symlink, a link loop, a FIFO) is listed as well, so extraction logs
  it as failed rather than skipping it. A folder that cannot be listed raises
  ``FolderScanError`` instead of being skipped silently, so a gather never quietly drops
  part of a corpus.
- The csv is quoted with the ``csv`` module and written atomically.
- An output counts as done only when it holds a complete float16 ``(N, dim)`` array, not
  merely when the file exists.

Long on purpose: finding videos, planning their outputs, reading and writing the csv and
telling a finished output are one contract (the layout of OUT and its csv), kept in one place.
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from .atomic import atomic_file
from .outputs import record_differences, record_from_comment

__all__ = [
    "CSV_HEADER",
    "VIDEO_EXTENSIONS",
    "FolderScanError",
    "ManifestError",
    "OutputCollisionError",
    "Row",
    "csv_path",
    "feature_path",
    "find_videos",
    "gather",
    "is_complete",
    "output_status",
    "plan_outputs",
    "plan_rows",
    "read_csv",
    "sibling_feature_path",
    "write_csv",
]

_REFERENCE_EXTENSIONS = (
    ".webm .mpg .mpeg .mpv .ogg .mp4 .m4p .avi .wmv .qt .mov .flv .swf"
)
# Audio-only, image and raw elementary-stream formats (.gif, .yuv, .h264) are left out: they
# either carry no video or cannot be decoded without extra parameters.
_MORE_EXTENSIONS = (
    ".mkv .mk3d .m4v .ts .mts .m2ts .m2t .trp .3gp .3g2 .ogv .ogm .vob .mod .tod .divx .f4v"
    " .asf .rm .rmvb .dv .mxf .y4m .m1v .m2v .mpe .nut .wtv .ivf .amv"
)
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    _REFERENCE_EXTENSIONS.split() + _MORE_EXTENSIONS.split()
)

CSV_HEADER = ("video_path", "feature_path")
_FEATURES_MEMBER = "features.npy"


class ManifestError(ValueError):
    """A csv manifest that cannot be read as ``video_path,feature_path`` rows."""


class FolderScanError(ValueError):
    """A folder under the video root that cannot be listed (permissions, I/O error)."""


class OutputCollisionError(ValueError):
    """Two or more videos would write the same feature file."""

    def __init__(self, collisions: Sequence[tuple[Path, Path, Path]]):
        self.collisions = list(collisions)
        super().__init__(_describe_collisions(self.collisions))


def _describe_collisions(collisions: Sequence[tuple[Path, Path, Path]], shown: int = 10) -> str:
    lines = [
        f"  '{first}' and '{second}' -> '{output}'"
        for first, second, output in collisions[:shown]
    ]
    if len(collisions) > shown:
        lines.append(f"  ... and {len(collisions) - shown} more")
    return (
        f"{len(collisions)} output collision(s): these videos would write the same feature "
        "file; rename or move one of each pair:\n" + "\n".join(lines)
    )


@dataclass(frozen=True)
class Row:
    video_path: Path
    feature_path: Path
    line: int = field(default=0, compare=False)  # where read_csv found it (0: not read)


# --- finding videos -------------------------------------------------------------------------

def _is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def find_videos(root: Path, skipped: Optional[list] = None) -> list[Path]:
    """Every video file under ``root``, recursively, sorted; see the module doc for the rules.

    Symlinks to folders are not followed; when ``skipped`` is a list, they are appended to
    it (sorted). Raises FolderScanError for a folder that cannot be listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"video root is not a directory: '{root}'")
    videos: list[Path] = []
    links: list[Path] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif _points_to_folder(entry):
                        links.append(Path(entry.path))
                    elif _is_video_name(entry.name):
                        # Dangling symlinks, link loops, FIFOs and devices with a video name
                        # are listed too: the decoder refuses them at once with the reason,
                        # so they end up in failed.jsonl instead of vanishing unnoticed.
                        videos.append(Path(entry.path))
        except OSError as exc:
            raise FolderScanError(f"cannot list the folder {directory}: "
                                  f"{exc.strerror or exc}") from None
    if skipped is not None:
        skipped.extend(sorted(links))
    return sorted(videos)


def _points_to_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop (ELOOP) or an unreadable target: not a folder we can enter
        return False


# --- planning outputs -----------------------------------------------------------------------

def feature_path(video: Path, video_root: Path, output_dir: Path, model: str) -> Path:
    """Where ``model``'s features for ``video`` go: the video's place under the root, mirrored."""
    _check_model_id(model)
    relative = _relative_to_root(Path(video), Path(video_root))
    return Path(output_dir) / f"{model}_features" / relative.with_suffix(".npz")


def _check_model_id(model: str) -> None:
    # The id becomes a folder name; a separator or dot-name would write outside output_dir.
    if not model or model in {".", ".."} or "/" in model or os.sep in model:
        raise ValueError(f"invalid model id: {model!r}")


def _relative_to_root(video: Path, video_root: Path) -> Path:
    # Lexical normalisation only: resolving symlinks would push a linked video "outside" the
    # root it was found in.
    absolute_video = Path(os.path.abspath(video))
    absolute_root = Path(os.path.abspath(video_root))
    try:
        relative = absolute_video.relative_to(absolute_root)
    except ValueError:
        raise ValueError(f"video '{video}' is not inside the video root '{video_root}'") from None
    if not relative.parts:
        raise ValueError(f"video path '{video}' is the video root itself")
    return relative


def plan_rows(
    videos: Iterable[Path], video_root: Path, output_dir: Path, model: str
) -> list[Row]:
    """One row per video, in the given order; raises if two videos share an output."""
    _check_model_id(model)
    return plan_outputs(videos, video_root, Path(output_dir) / f"{model}_features")


def plan_outputs(videos: Iterable[Path], video_root: Path, feature_dir: Path) -> list[Row]:
    """One row per video, its output the video's place under the root mirrored under
    `feature_dir` (extension -> .npz), in the given order; raises OutputCollisionError
    naming every pair of videos that would share an output."""
    rows: list[Row] = []
    owner_of: dict[str, Path] = {}
    collisions: list[tuple[Path, Path, Path]] = []
    for video in videos:
        video = Path(video)
        relative = _relative_to_root(video, Path(video_root))
        output = Path(feature_dir) / relative.with_suffix(".npz")
        # normcase: on a case-insensitive file system X.npz and x.npz are one file.
        key = os.path.normcase(str(output))
        owner = owner_of.get(key)
        if owner is None:
            owner_of[key] = video
            rows.append(Row(video, output))
        elif owner != video:  # the same video listed twice is still one row
            collisions.append((owner, video, output))
    if collisions:
        raise OutputCollisionError(collisions)
    return rows


def sibling_feature_path(path: Path, model: str, among: Iterable[str]) -> Optional[Path]:
    """`path` with its last `<m>_features` folder (m one of `among`) swapped for
    `<model>_features`, the rule by which the reference derived its RN50x4 paths from ViT
    ones; None when the path has no such folder."""
    folders = {f"{m}_features" for m in among}
    parts = list(Path(path).parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in folders:
            parts[i] = f"{model}_features"
            return Path(*parts)
    return None


# --- csv files ------------------------------------------------------------------------------

def csv_path(output_dir: Path, model: str) -> Path:
    return Path(output_dir) / "csv" / f"{model}_info.csv"


def write_csv(rows: Iterable[Row], path: Path) -> None:
    """Write a manifest atomically: readers see the old file or the whole new one."""
    path = Path(path)
    lines = [CSV_HEADER] + [
        (_csv_field(row.video_path), _csv_field(row.feature_path)) for row in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape: file names that are not valid UTF-8 keep their exact bytes.
    with atomic_file(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as out:
        _write_lines(out, lines)


def _write_lines(out, lines: list[tuple[str, str]]) -> None:
    # QUOTE_MINIMAL leaves a bare "\r" unquoted when the line terminator is "\n", and a reader
    # then splits the row there; such rows are quoted whole.
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for line in lines:
        (quoted if any("\r" in field for field in line) else plain).writerow(line)


def _csv_field(path: Path) -> str:
    # read_csv strips whitespace around fields (for hand-written reference csvs), so a field
    # must not begin or end with whitespace. A leading space only happens in a relative path,
    # where "./" keeps the same path; trailing whitespace would end the extension, so no
    # gathered video or feature path has it.
    text = str(path)
    if text != text.rstrip():
        raise ValueError(f"path ends with whitespace, which a manifest cannot hold: {text!r}")
    if text != text.lstrip():
        text = os.curdir + os.sep + text
    return text


def read_csv(path: Path) -> list[Row]:
    """Read our manifests and the reference's (unquoted, or with ``", "`` as in its README).

    Whitespace around every field is stripped, which is what makes the README's ``", "`` style
    work; a path that really begins or ends with whitespace cannot be listed (write_csv writes
    ``./ name`` for the one case that occurs). Blank lines are skipped, a UTF-8 BOM is ignored,
    and the first non-blank row must be the header ``video_path,feature_path``. Rows carry the
    line they start on.
    """
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as source:
        tap = _LineTap(source)
        records = csv.reader(tap, skipinitialspace=True)
        rows: list[Row] = []
        header_seen = False
        start = 1  # the line the record being read begins on
        try:
            for record in records:
                line, start = start, records.line_num + 1
                if records.line_num > line and tap.take().count('"') % 2:
                    # A quote left open takes every later line into one field, which the
                    # reader does not call an error; an odd number of quotes in a record that
                    # spans lines is that (a closed quoted field holds an even number).
                    raise ManifestError(f"{path}, line {line}: a quote opened on this line "
                                        f"is never closed (its field runs to the end of the "
                                        f"file)")
                tap.take()
                fields = [field.strip() for field in record]
                if not any(fields):
                    continue
                if not header_seen:
                    _check_header(fields, path, line)
                    header_seen = True
                    continue
                rows.append(_row_from_fields(fields, path, line))
        except csv.Error as error:
            raise ManifestError(f"{path}, line {start}: {error}") from None
    if not header_seen:
        raise ManifestError(f"{path}: empty manifest, expected the header {','.join(CSV_HEADER)}")
    return rows


class _LineTap:
    """The lines a csv reader takes, kept until taken back, to look at a record's raw text."""

    def __init__(self, lines):
        self.lines = iter(lines)
        self.taken: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.taken.append(line)
        return line

    def take(self) -> str:
        text, self.taken = "".join(self.taken), []
        return text


def _check_header(fields: list[str], path: Path, line: int) -> None:
    if tuple(fields) != CSV_HEADER:
        raise ManifestError(
            f"{path}, line {line}: expected the header {','.join(CSV_HEADER)}, "
            f"got {','.join(fields)}"
        )


def _row_from_fields(fields: list[str], path: Path, line: int) -> Row:
    if len(fields) != len(CSV_HEADER):
        raise ManifestError(
            f"{path}, line {line}: expected 2 fields (video_path,feature_path), got "
            f"{len(fields)}; a path containing a comma must be quoted"
        )
    if not all(fields):
        raise ManifestError(f"{path}, line {line}: empty path")
    if fields[1].endswith(("/", os.sep)):
        # np.savez would have written a hidden "<folder>/.npz"; a folder is never meant.
        raise ManifestError(f"{path}, line {line}: the feature path {fields[1]} ends with "
                            f"'/': name the .npz file, not a folder")
    return Row(Path(fields[0]), Path(fields[1]), line)


# --- finished outputs -----------------------------------------------------------------------

# output_status results
MISSING = "missing"  # no finished output (absent, partial, another width, not ours)
DONE = "done"  # finished, and its record says this run's settings made it
UNRECORDED = "unrecorded"  # finished, no record (the reference, or a version before records)
OTHER_SETTINGS = "other settings"  # finished, but its record names other settings


def is_complete(path: Path, dim: int, record: Optional[Mapping] = None) -> bool:
    """True when ``path`` is a finished output: a whole ``.npz``, float16 ``features (N, dim)``.

    With ``record`` (this run's, see outputs.make_record), an output whose record names
    other settings (another clip_len, checkpoint, precision...) is not finished; one without
    a record (written by the reference or an older version) still is. Only the zip
    directory and the array header are read, never the data, so checking a million outputs
    stays cheap. Any error (missing, not a zip, cut short, unreadable) is False.
    """
    return output_status(path, dim, record)[0] in (DONE, UNRECORDED)


def output_status(path: Path, dim: int, record: Optional[Mapping] = None) -> tuple[str, list]:
    """(MISSING | DONE | UNRECORDED | OTHER_SETTINGS, the differing settings) for ``path``
    against this run's ``record`` (None: any finished output is DONE)."""
    try:
        found = _complete_features_record(Path(path), dim)
    except Exception:
        return MISSING, []
    if found is False:
        return MISSING, []
    if record is None:
        return DONE, []
    if found is None:
        return UNRECORDED, []
    differences = record_differences(found, record)
    return (OTHER_SETTINGS, differences) if differences else (DONE, [])


def _complete_features_record(path: Path, dim: int):
    """False when not a finished output, else its record (None when it has none)."""
    # Outputs are written as temporaries and renamed into place, so anything not named .npz
    # (x.npz.tmp) is an unfinished write even if its bytes look whole.
    if path.suffix != ".npz":
        return False
    # A zip's directory is written last, at its end, and opening a member checks the member's
    # own header: a file cut short or missing a middle piece fails here.
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo(_FEATURES_MEMBER)
        with archive.open(member) as array_file:
            shape, dtype, data_offset = _read_npy_header(array_file)
        whole = (
            _is_float16(dtype)
            and len(shape) == 2
            and shape[1] == dim
            # The header's shape must account for exactly the bytes stored after it.
            and member.file_size == data_offset + math.prod(shape) * dtype.itemsize
        )
        return record_from_comment(archive.comment) if whole else False


def is_features_file(path: Path) -> bool:
    """True when ``path`` is a file np.savez(path, features=...) could have written, so one
    an extraction may replace: a zip holding only ``features.npy``, or one cut short (a
    crashed or interrupted copy) that begins with that member. Anything else at an output
    path (a video, a config file, an npz of other arrays) is not ours to overwrite."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist() == [_FEATURES_MEMBER]
    except zipfile.BadZipFile:
        pass
    except Exception:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(30 + len(_FEATURES_MEMBER))
    except OSError:
        return False
    # A local file header (APPNOTE 4.3.7): signature, ..., name length at 26, name at 30.
    return (head[:4] == b"PK\x03\x04"
            and int.from_bytes(head[26:28], "little") == len(_FEATURES_MEMBER)
            and head[30:] == _FEATURES_MEMBER.encode())


_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _read_npy_header(array_file) -> tuple[tuple[int, ...], np.dtype, int]:
    # Versions 1 and 2 are the only ones numpy writes for a plain float array; an unknown
    # version raises KeyError, which is_complete turns into False.
    version = np.lib.format.read_magic(array_file)
    shape, _fortran_order, dtype = _NPY_HEADER_READERS[version](array_file)
    return shape, dtype, array_file.tell()


def _is_float16(dtype: np.dtype) -> bool:
    # Either byte order: np.load returns the right values for both.
    return dtype.kind == "f" and dtype.itemsize == 2


# --- the gather step ------------------------------------------------------------------------

def gather(
    video_root: Path, output_dir: Path, models: Sequence[str], dims: Mapping[str, int],
    videos: Optional[Sequence[Path]] = None,
    skipped: Optional[list] = None,
) -> dict[str, Path]:
    """Write ``OUT/csv/<model>_info.csv`` per model, listing the videos still to extract.

    Every model is planned before any csv is written, so a collision or an unknown model
    leaves the output folder untouched. ``videos``: the result of ``find_videos(video_root)``
    when the caller already has it (a large tree is walked once). ``skipped`` gets the folder links not followed.
    """
    video_root, output_dir = Path(video_root), Path(output_dir)
    models = list(dict.fromkeys(models))
    missing_dims = [model for model in models if model not in dims]
    if missing_dims:
        raise KeyError(f"no feature dimension given for model(s): {', '.join(missing_dims)}")
    videos = find_videos(video_root, skipped) if videos is None else list(videos)
    plans = {model: plan_rows(videos, video_root, output_dir, model) for model in models}
    written: dict[str, Path] = {}
    for model, rows in plans.items():
        pending = [row for row in rows if not is_complete(row.feature_path, dims[model])]
        written[model] = csv_path(output_dir, model)
        write_csv(pending, written[model])
    return written
