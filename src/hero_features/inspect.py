"""`hero-features inspect`: what feature files hold, which part of the video each row stands
for, and (`--sheet`) a contact sheet of the very frames each row was computed from.

Time spans follow the rules the extractor used (docs/fidelity.md 3.2-3.5):

- Frame models (resnet, clip-*): the fps filter runs at F = 1/clip_len (the short-video rule
  makes it 2/int(D) for a video of D < clip_len + 0.1 s), so row k stands for [k/F, (k+1)/F)
  and its frame is the last source frame that starts before (k + 0.5)/F, the middle of that
  window (shown as "~t").
- Clip models (slowfast, mil-nce): the video is re-timed to 30 fps and cut into clips of
  L = 30 * clip_len frames, so row k covers [k*clip_len, (k+1)*clip_len); the 32 frames the
  model sees are positions temporal_indices(L, source fps) of that clip (times n/30 s). A clip
  reaching past the video's end is padded with repeats of its last second ("*" on those
  frames).

The sheet decodes with the extractor's own producer (same decoder, timeline, crop and clip
sampler), so its tiles are the model's input, before normalisation.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Optional, Sequence

import numpy as np

from .errors import UsageError
from .outputs import read_record

TARGET_FPS = 30  # the clip models' decode rate (--target_framerate's default)


class InspectError(UsageError, ValueError):
    """Inspect cannot run as asked (reported in one line, exit 2)."""


# == which part of the video each row stands for ==================================================

@dataclass(frozen=True)
class RowSpan:
    index: int
    start: float  # seconds
    end: float  # seconds, exclusive; capped at the duration when it is known
    frames: tuple  # seconds of the frames fed to the model (frame models: the nominal "~t")
    padded: bool = False  # a clip reaching past the end, filled with repeats of its last second


def _unit(model: str) -> str:
    from .models import get_spec

    return get_spec(model).unit


def frame_rate(clip_len: Fraction, duration: Optional[float]) -> float:
    """The frame models' fps filter rate, by the extractor's own rule."""
    from .config import DecodeSettings
    from .producer import frame_rate as extractor_rate

    return float(extractor_rate("frame", DecodeSettings(clip_len=clip_len),
                                SimpleNamespace(duration=duration)))


def row_spans(model: str, rows: int, clip_len: Fraction, duration: Optional[float] = None,
              source_fps: Optional[int] = None) -> list[RowSpan]:
    """What each of `rows` rows stands for; `duration` (stream duration) and `source_fps`
    (floor of the average frame rate) come from the video when it is known."""
    if _unit(model) == "frame":
        rate = frame_rate(clip_len, duration)
        return [RowSpan(k, k / rate, _cap((k + 1) / rate, duration), ((k + 0.5) / rate,))
                for k in range(rows)]
    from .sampling import clip_frames, temporal_indices

    length = clip_frames(clip_len, TARGET_FPS)
    picks = temporal_indices(length, source_fps) if source_fps else []
    spans = []
    for k in range(rows):
        start, end = k * length / TARGET_FPS, (k + 1) * length / TARGET_FPS
        frames = tuple((k * length + int(i)) / TARGET_FPS for i in picks)
        spans.append(RowSpan(k, start, _cap(end, duration), frames,
                             padded=duration is not None and end > duration + 1e-9))
    return spans


def _cap(end: float, duration: Optional[float]) -> float:
    return min(end, duration) if duration else end


def expected_rows(model: str, clip_len: Fraction, duration: Optional[float]) -> Optional[int]:
    """Rows the extractor writes for a video of stream duration `duration` (None: not known
    without decoding, e.g. a WebM stream without a duration)."""
    if not duration:
        return None
    if _unit(model) == "frame":  # FFmpeg >= 4 fps filter count: round half away from zero
        return max(1, math.floor(duration * frame_rate(clip_len, duration) + 0.5))
    from .sampling import max_clips

    return max_clips(duration, clip_len)


# == what made a file ============================================================================

@dataclass
class FileInfo:
    path: Path
    model: Optional[str]
    shape: tuple = ()
    dtype: str = ""
    record: Optional[dict] = None
    problem: str = ""


def _model_from_path(path: Path) -> Optional[str]:
    from .models import MODEL_IDS

    for part in reversed(path.parts[:-1]):
        if part.endswith("_features") and part[:-len("_features")] in MODEL_IDS:
            return part[:-len("_features")]
    return None


def _record_value(record: Optional[dict], *keys: str):
    for key in keys:
        if record and record.get(key) not in (None, ""):
            return record[key]
    return None


def load_info(path: Path, model: Optional[str] = None) -> FileInfo:
    record = read_record(path)
    model = model or _record_value(record, "model", "model_id") or _model_from_path(path)
    info = FileInfo(path, model, record=record)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "features" not in data.files:
                info.problem = f"no 'features' array (keys: {', '.join(data.files) or 'none'})"
                return info
            header = data["features"]
            info.shape, info.dtype = tuple(header.shape), str(header.dtype)
    except Exception as exc:  # a broken file is reported, the others are still listed
        info.problem = f"unreadable: {type(exc).__name__}: {exc}"
    return info


def find_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InspectError(f"{path} does not exist")
    files = sorted(p for p in path.rglob("*.npz") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InspectError(f"no .npz feature files under {path}")
    return files


def _clip_len(args, record: Optional[dict]) -> tuple[Fraction, str]:
    from .sampling import parse_clip_len

    text = args.clip_len or _record_value(record, "clip_len")
    source = "given" if args.clip_len else "recorded" if text is not None else "assumed"
    try:
        return parse_clip_len(text if text is not None else "3/2"), source
    except ValueError as exc:
        raise InspectError(str(exc)) from None


def _record_text(record: Optional[dict]) -> str:
    if not record:
        return "no record"
    return "record: " + ", ".join(f"{k}={v}" for k, v in record.items())


def _span_text(spans: Sequence[RowSpan]) -> str:
    if not spans:
        return "no rows"
    return f"{spans[0].start:.2f}-{spans[-1].end:.2f} s"


def summary_line(info: FileInfo, clip_len: Fraction, clip_source: str,
                 duration: Optional[float] = None, root: Optional[Path] = None) -> str:
    name = info.path.relative_to(root) if root else info.path
    if info.problem:
        return f"{name}: {info.problem}"
    rows = info.shape[0] if info.shape else 0
    head = f"{name}: {rows} row{'' if rows == 1 else 's'}, {info.dtype} {info.shape}"
    if info.model is None:
        return f"{head}, model unknown (name it with --model); {_record_text(info.record)}"
    spans = row_spans(info.model, rows, clip_len, duration)
    if _unit(info.model) == "frame":
        rule = f"row k = frame ~(k+0.5)*{clip_len} s"
    else:
        rule = f"row k = clip [k*{clip_len}, (k+1)*{clip_len}) s at 30 fps"
    return (f"{head}, {info.model}, clip_len {clip_len} ({clip_source}): {rule}, covering "
            f"{_span_text(spans)}; {_record_text(info.record)}")


def row_lines(info: FileInfo, spans: Sequence[RowSpan]) -> list[str]:
    lines = []
    for span in spans:
        if _unit(info.model) == "frame":
            what = f"frame ~{span.frames[0]:.3f} s"
        elif span.frames:
            what = f"32 frames at {span.frames[0]:.3f}..{span.frames[-1]:.3f} s (30 fps)"
        else:
            what = "32 frames of this clip (pass --video for their times)"
        pad = ", padded past the end with repeats of the last second" if span.padded else ""
        lines.append(f"  row {span.index}: {span.start:.3f}-{span.end:.3f} s, {what}{pad}")
    return lines


# == the command ==================================================================================

def run_from_args(args) -> int:
    """0: every file read; 1: some could not be read; InspectError for bad usage."""
    from .models import MODEL_IDS

    path = Path(args.path)
    if args.model is not None and args.model not in MODEL_IDS:
        raise InspectError(f"unknown model {args.model}; choose from {', '.join(MODEL_IDS)}")
    files = find_files(path)
    single = path.is_file()
    if (args.video or args.sheet) and not single:
        raise InspectError("--video and --sheet take one .npz file, not a folder")
    if args.sheet and not args.video:
        raise InspectError("--sheet needs --video (the video the file was made from)")
    video_info = _probe(args.video) if args.video else None
    duration = video_info.duration if video_info else None
    failed = 0
    for file in files:
        info = load_info(file, args.model)
        clip_len, source = _clip_len(args, info.record)
        print(summary_line(info, clip_len, source, duration, None if single else path))
        failed += bool(info.problem)
        if not single or info.problem or info.model is None:
            continue
        rows = info.shape[0]
        want = expected_rows(info.model, clip_len, duration)
        if want is not None and want != rows:
            print(f"note: {args.video} gives {want} rows at clip_len {clip_len}, the file has "
                  f"{rows}: another video, or another --clip_len?", file=sys.stderr)
        spans = row_spans(info.model, rows, clip_len, duration,
                          video_info.fps if video_info else None)
        for line in row_lines(info, spans):
            print(line)
        if args.sheet:
            limit = rows if args.max_rows is None else min(rows, args.max_rows)
            drawn = draw_sheet(args.video, info.model, clip_len, spans[:limit], args.sheet)
            print(f"contact sheet: {args.sheet} ({drawn} rows)")
    return 1 if failed else 0


def _probe(video: Path):
    from .video import VideoError, probe

    try:
        return probe(video)
    except VideoError as exc:
        raise InspectError(f"cannot read --video {video}: {exc}") from None


# == the contact sheet ============================================================================

MARGIN, GAP, CAPTION_H = 4, 4, 14
LABEL_W = 120  # clip models: the row's label left of its strip
FRAME_TILE_H, CLIP_TILE_H = 112, 56
FRAME_COLUMNS = 6  # frame models: rows laid out in a grid, this many per line
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class SheetGeometry:
    """Where everything goes; also what a test needs to find a tile in the PNG."""

    unit: str
    rows: int
    tiles_per_row: int  # 1 for frame models, 32 for clip models
    tile_w: int
    tile_h: int

    def tile_box(self, row: int, j: int = 0) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile j of feature row `row`."""
        if self.unit == "frame":
            line, column = divmod(row, FRAME_COLUMNS)
            left = MARGIN + column * (self.tile_w + GAP)
        else:
            line, column = row, j
            left = MARGIN + LABEL_W + column * (self.tile_w + GAP)
        top = MARGIN + line * (self.tile_h + CAPTION_H + GAP)
        return left, top, left + self.tile_w, top + self.tile_h

    @property
    def size(self) -> tuple[int, int]:
        if self.unit == "frame":
            columns, lines = min(self.rows, FRAME_COLUMNS), -(-self.rows // FRAME_COLUMNS)
            width = 2 * MARGIN + columns * (self.tile_w + GAP) - GAP
        else:
            lines = self.rows
            width = 2 * MARGIN + LABEL_W + self.tiles_per_row * (self.tile_w + GAP) - GAP
        return width, 2 * MARGIN + lines * (self.tile_h + CAPTION_H + GAP) - GAP


def sheet_geometry(model: str, rows: int, frame_w: int, frame_h: int) -> SheetGeometry:
    from .sampling import NUM_FRAMES

    unit = _unit(model)
    tile_h = FRAME_TILE_H if unit == "frame" else CLIP_TILE_H
    tile_w = max(1, round(frame_w * tile_h / frame_h))
    return SheetGeometry(unit, rows, 1 if unit == "frame" else NUM_FRAMES, tile_w, tile_h)


def model_inputs(video: Path, model: str, clip_len: Fraction) -> Iterator[np.ndarray]:
    """Each row's uint8 input exactly as the extractor hands it to the model: (H, W, 3) for a
    frame model, (32, H, W, 3) for a clip model. Raises InspectError if the video fails."""
    from .models import get_spec
    from .config import DecodeSettings, InputGroup
    from .messages import Failed, Units
    from .producer import decode_video_units

    spec = get_spec(model)
    group = InputGroup((model,), spec.unit, spec.size, spec.crop)
    for message in decode_video_units(0, os.fspath(video), [group],
                                      DecodeSettings(clip_len=clip_len)):
        if isinstance(message, Units):
            yield from message.units
        elif isinstance(message, Failed):
            raise InspectError(f"cannot decode {video} ({message.stage}): {message.reason}")


def draw_sheet(video: Path, model: str, clip_len: Fraction, spans: Sequence[RowSpan],
               out: Path) -> int:
    """Write the contact sheet of `spans` to `out` (PNG); returns the rows drawn."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # torchvision brings Pillow, so this only happens in odd installs
        raise InspectError("--sheet needs Pillow: pip install pillow") from None

    sheet = draw = geometry = None
    drawn = 0
    for span, unit in zip(spans, model_inputs(video, model, clip_len)):
        frames = unit[None] if unit.ndim == 3 else unit
        if sheet is None:
            geometry = sheet_geometry(model, len(spans), frames.shape[2], frames.shape[1])
            sheet = Image.new("RGB", geometry.size, BACKGROUND)
            draw = ImageDraw.Draw(sheet)
        for j, frame in enumerate(frames):
            left, top, right, bottom = geometry.tile_box(span.index, j)
            tile = Image.fromarray(np.ascontiguousarray(frame)).resize(
                (right - left, bottom - top), Image.BILINEAR)
            sheet.paste(tile, (left, top))
            draw.text((left, bottom + 1), _caption(geometry, span, j), fill=INK)
        if geometry.unit == "clip":
            left, top, _, _ = geometry.tile_box(span.index, 0)
            draw.text((MARGIN, top), f"row {span.index}\n{span.start:.2f}-{span.end:.2f} s"
                                     f"{chr(10) + 'padded' if span.padded else ''}", fill=INK)
        drawn += 1
    if sheet is None:
        raise InspectError(f"{video} gave no {model} rows")
    try:
        sheet.save(out, format="PNG")
    except OSError as exc:
        raise InspectError(f"cannot write {out}: {exc.strerror or exc}") from None
    return drawn


def _caption(geometry: SheetGeometry, span: RowSpan, j: int) -> str:
    if geometry.unit == "frame":
        return f"r{span.index} ~{span.frames[0]:.2f}s"
    if j >= len(span.frames):
        return ""
    late = "*" if span.padded and span.frames[j] >= span.end else ""
    return f"{span.frames[j]:.2f}{late}"
