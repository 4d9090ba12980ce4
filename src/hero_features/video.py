"""Open, probe and decode one video in-process with PyAV, as the reference's ffmpeg CLI did.

The reference ran `ffmpeg -i IN -filter_complex "[0]fps=fps=F[s0];[s0]scale=W:H[s1]
[;[s1]crop=S:S:X:Y[s2]]" -f rawvideo -pix_fmt rgb24 pipe:` and read the whole output into
RAM. We build the same filter graph (one branch per distinct decode spec behind a `split`)
and yield frames as the graph produces them, so memory does not grow with the video.

Long on purpose: opening under the file guard, probing, decoding, picking, scaling and the
damage report are one sequence over one container and share its state (the clock, the
renderer, the report); split, each piece would need the others' internals.
"""
from __future__ import annotations

import errno
import math
import os
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Generator, Optional, Sequence

import av
import av.error
import av.filter
from av.stream import Discard
import numpy as np

from .swsplan import DeviceGeometry, frame_geometry, pack_planes, quarter_turn
from .timeline import FpsSelector, InputClock, OutputSync, parse_rate, stream_facts


class DevicePick:
    """A picked frame on the device path (decode_container's scale_on="device").

    `geometry` says how the device turns `packed()` (the frame's YUV planes, one after
    another) into the CPU path's pixels (devicescale.rgb_from_packed); it is None where the
    device path does not reproduce the CPU graph (a pixel format, colour matrix or rotation
    it does not cover, or a graph the CLI rebuilt mid-stream), and `reason` says why. `rgb()`
    is always the CPU path's array for the same pick, so a caller can mix the two.
    Holds the decoded frame (not a copy of its planes) until the pick is dropped.
    """

    __slots__ = ("_picture", "_branch", "_render", "geometry", "reason", "_crop")

    def __init__(self, picture: "_Picture", branch: "_Branch", render: "_Renderer",
                 geometry: Optional[DeviceGeometry], reason: Optional[str],
                 crop: Optional[int] = None):
        self._picture, self._branch, self._render = picture, branch, render
        self.geometry, self.reason, self._crop = geometry, reason, crop

    def packed(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The frame's Y, U and V planes packed (1-D uint8; into `out` when given, see
        swsplan.pack_planes); only where `geometry` is set."""
        if self.geometry is None:
            raise ValueError(f"no device path for this frame: {self.reason}")
        return pack_planes(self._picture.frame, out)

    def rgb(self) -> np.ndarray:
        """The CPU graph's rgb24 array for this pick (read-only, as decode's)."""
        rgb = self._render(self._picture, self._branch)
        if self._crop is not None:
            h, w = rgb.shape[:2]
            x, y = crop_offset(w, h, self._crop)
            rgb = rgb[y:y + self._crop, x:x + self._crop]
        return rgb

    def centre_crop(self, size: int) -> "DevicePick":
        """The same pick cropped to size x size in the middle, as the crop filter does."""
        if self._crop is not None:
            raise ValueError("this pick is cropped already")
        geometry = None if self.geometry is None else self.geometry.centre_crop(size)
        return DevicePick(self._picture, self._branch, self._render, geometry, self.reason,
                          size)


class VideoError(Exception):
    """A video that cannot be probed or decoded; `stage` says which step failed."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


# Demuxers that open further files or URLs named inside the input (playlists, concat lists,
# image sequences, network session descriptions, DVD structures, scripts) or beside it (a
# VobSub index opens the .sub of the same name, MLV its .M00, .M01 ... chunks). A scraped
# "video" must never make us read anything but itself. They are kept off FFmpeg's format
# whitelist, so they are refused after probing and BEFORE they read their header: concat
# and vobsub open their other file while reading the header, through a context of their own
# that does not use our io_open hook (docs/reliability.md lists the audit).
_DEMUXERS_THAT_OPEN_OTHER_FILES = frozenset({
    "hls", "applehttp", "concat", "dash", "webm_dash_manifest", "image2", "imf", "sdp", "rtp",
    "rtsp", "sap", "tee", "lavfi", "ffmetadata", "dvdvideo", "avisynth", "vapoursynth",
    "vobsub", "mlv",
})
_FORMAT_WHITELIST = ",".join(sorted(name for name in av.formats_available
                                    if not set(name.split(",")) & _DEMUXERS_THAT_OPEN_OTHER_FILES))
# What refused files usually are, to name them in the failure message.
_SIGNATURES = ((b"#EXTM3U", "an HLS playlist"), (b"ffconcat version", "an ffconcat list"),
               (b"<?xml", "an XML manifest (DASH/IMF?)"), (b"<MPD", "a DASH manifest"),
               (b"v=0", "an SDP session description"),
               (b"# VobSub index file", "a VobSub subtitle index"), (b"MLVI", "an MLV recording"))
# A single picture (FFmpeg's *_pipe image demuxers) or text rendered as frames (tty) gives a
# "video" of one still, which is never what a video corpus meant to hold.
_NOT_VIDEO_DEMUXERS = frozenset({"image2pipe", "tty"})

# Beyond these a frame costs hundreds of MB before scaling (16384x8192 still fits 16K
# 360-degree video), and a short side this many times shorter than the long one makes the
# uncropped models (resnet) run on images of 224 x 3600+ pixels: such files are not videos
# anyone meant to extract, but they can exhaust a worker's or the device's memory.
MAX_PIXELS = 16384 * 8192
MAX_ASPECT_RATIO = 16

# Decoding keeps going past packets the decoder rejects, as the reference's ffmpeg CLI did;
# above this share of damaged packets the features would mostly describe concealment.
MAX_DAMAGED_SHARE = 0.1
# Containers whose stream durations come from their header (not estimated from timestamps
# or the bitrate), so that a stream ending well before it is a truncated file.
_HEADER_DURATION_FORMATS = frozenset({"mov", "matroska", "avi", "asf"})


@dataclass(frozen=True)
class VideoInfo:
    """What the reference's ffprobe call gave (docs/fidelity.md 3.1)."""

    width: int  # stream width/height as stored, rotation and SAR ignored
    height: int
    fps: int  # floor(avg_frame_rate)
    duration: Optional[float]  # stream duration; None unless the stream has it AND a frame count
    nb_frames: Optional[int]


@dataclass(frozen=True)
class DecodeSpec:
    """One branch of the decode graph: frame rate, short-side size, centre crop or not.

    `fps` is kept as the text the reference passed to FFmpeg (e.g. "0.6666666666666666") so
    FFmpeg turns it into the same rational.
    """

    fps: str
    size: int
    crop: bool


def output_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """(out_w, out_h): short side exactly `size`, long side truncated (docs/fidelity.md 3.3)."""
    if height >= width:
        return size, int(height * size / width)
    return int(width * size / height), size


def crop_offset(out_w: int, out_h: int, size: int) -> tuple[int, int]:
    return int((out_w - size) / 2), int((out_h - size) / 2)


def scale_filter(out_w: int, out_h: int) -> tuple[str, str]:
    # flags=bilinear: the reference environment's FFmpeg (<= 4) scaled bilinearly by default;
    # FFmpeg >= 5 defaults to bicubic, so the flag must be explicit.
    return "scale", f"{out_w}:{out_h}:flags=bilinear"


def crop_filter(out_w: int, out_h: int, size: int) -> tuple[str, str]:
    x, y = crop_offset(out_w, out_h, size)
    return "crop", f"{size}:{size}:{x}:{y}"


def filter_chain(spec: DecodeSpec, width: int, height: int) -> list[tuple[str, str]]:
    """The reference's command for one spec, as (filter name, arguments) pairs: what the
    tests hand the ffmpeg CLI. (The decoder runs the fps part in timeline.py.)"""
    out_w, out_h = output_dims(width, height, spec.size)
    chain = [("fps", f"fps={spec.fps}"), scale_filter(out_w, out_h)]
    if spec.crop:
        chain.append(crop_filter(out_w, out_h, spec.size))
    # The CLI's `-pix_fmt rgb24` becomes a format filter before the sink; negotiation then
    # lets `scale` convert to RGB in the same swscale pass, as the reference's graph did.
    return chain + [("format", "pix_fmts=rgb24")]


def display_matrix(frame) -> Optional[tuple[int, ...]]:
    """The frame's display matrix (9 fixed-point int32s), None when it has none."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX" and len(bytes(data)) == 36:
            return struct.unpack("=9i", bytes(data))
    return None


class DisplayMatrices:
    """Each decoded frame's display matrix, without keeping the frames alive.

    Reading `frame.side_data` ties the frame and PyAV's side-data container into a reference
    cycle, so the decoded picture (megabytes) stays allocated until Python's cyclic
    collector runs, which in a decode loop is hundreds of frames later (measured: 720p clip
    decoding held ~300 MB more). PyAV's `frame.rotation` reads the matrix's angle without
    that cycle, so the full matrix is read on the first frame and again whenever the angle
    changes; in between the previous frame's matrix is the answer. A matrix that changes
    mid-stream without changing its angle (a display-orientation SEI toggling only a flip)
    goes unseen (docs/fidelity.md).
    """

    def __init__(self):
        self._angle: object = ()  # no frame seen yet
        self._matrix: Optional[tuple[int, ...]] = None

    def __call__(self, frame) -> Optional[tuple[int, ...]]:
        try:
            angle = frame.rotation
        except (AttributeError, ValueError):  # an older PyAV, or a degenerate matrix
            return display_matrix(frame)
        if angle != self._angle:
            self._angle, self._matrix = angle, display_matrix(frame)
        return self._matrix


def _display_rotation(matrix: Sequence[int]) -> float:
    """libavutil's av_display_rotation_get: counter-clockwise degrees, NaN when degenerate."""
    m = [value / 65536.0 for value in matrix]
    scale = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale[0] == 0.0 or scale[1] == 0.0:
        return math.nan
    return -math.atan2(m[1] / scale[1], m[0] / scale[0]) * 180 / math.pi


def rotation_filters(matrix: Optional[Sequence[int]]) -> list[tuple[str, str]]:
    """The filters the ffmpeg CLI's autorotate puts before the graph for a display matrix
    (FFmpeg 5.1's rules, mirrored matrices included)."""
    if matrix is None:
        return []
    angle = _display_rotation(matrix)
    if math.isnan(angle):
        return []
    theta = -float(math.copysign(math.floor(abs(angle) + 0.5), angle))  # C round()
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return [("transpose", "cclock_flip" if matrix[3] > 0 else "clock")]
    if abs(theta - 180) < 1:
        return ([("hflip", "")] if matrix[0] < 0 else []) + \
               ([("vflip", "")] if matrix[4] < 0 else [])
    if abs(theta - 270) < 1:
        return [("transpose", "clock_flip" if matrix[3] < 0 else "cclock")]
    if abs(theta) > 1:
        return [("rotate", f"{theta:f}*PI/180")]
    return [("vflip", "")] if matrix[4] < 0 else []


def _guarded_opener(path: str, refused: list, alias: str):
    """io_open hook: FFmpeg may open only the file it was given (named `alias` to FFmpeg),
    nothing it names. Refused URLs are appended to `refused`: FFmpeg reports the failure as
    mere "invalid data"."""
    wanted = os.path.realpath(path)

    def io_open(url, flags, options):
        target = url[len("file:"):] if url.startswith("file:") else url
        if url == alias and flags == 1:
            return open(wanted, "rb")
        if os.path.realpath(target) != wanted or flags != 1:  # 1 = AVIO_FLAG_READ
            refused.append(url)
            raise PermissionError(f"refusing to open {url!r} named inside {path!r}")
        return open(wanted, "rb")

    return io_open


def _check_file(path: str) -> None:
    """Fail with the real reason before FFmpeg turns it into "invalid data"."""
    if not os.path.exists(path):
        if os.path.islink(path) and _is_link_loop(path):
            raise VideoError("open", f"symlink loop: {path} -> {os.readlink(path)}")
        if os.path.islink(path):
            raise VideoError("open", f"dangling symlink: {path} -> {os.readlink(path)}")
        raise VideoError("open", f"file does not exist: {path}")
    if not os.path.isfile(path):
        # Never open a FIFO or device: opening a FIFO blocks until someone writes to it.
        raise VideoError("open", f"not a regular file: {path}")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise VideoError("open", f"cannot read the file: {exc.strerror}: {path}") from None
    try:
        empty = os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
    if empty:
        raise VideoError("open", f"empty file (0 bytes): {path}")


def _is_link_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _reason(exc: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without PyAV's
    "[Errno 1094995529]" and the file name the log line already carries."""
    return getattr(exc, "strerror", None) or str(exc)


def _damage_hint(path: str) -> str:
    """Why a file that starts like a video cannot be opened, in a researcher's words."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return ""
    if head[4:8] == b"ftyp":  # an ISO-BMFF file: mp4 / mov / m4v / 3gp
        return " (an MP4/MOV without a readable moov index: cut short before its end?)"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return " (a Matroska/WebM file that cannot be parsed: cut short or damaged?)"
    return ""


def _ffmpeg_name(path: str) -> str:
    """The name FFmpeg is given for `path`. PyAV hands URLs to the io_open hook as strict
    UTF-8, so a file name that is not UTF-8 (scraped corpora have Latin-1 ones) gets a
    stand-in; its extension is kept, as a few demuxers probe by extension."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        extension = os.path.splitext(path)[1]
        return "non-utf8-file-name" + (extension if extension.isascii() else "")


def _sniff(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return None
    return next((what for signature, what in _SIGNATURES if head.startswith(signature)), None)


def open_video(path: str | os.PathLike) -> av.container.InputContainer:
    path = os.fspath(path)
    _check_file(path)
    refused: list[str] = []
    alias = _ffmpeg_name(path)
    try:
        container = av.open(
            alias,
            container_options={"protocol_whitelist": "file",
                               "format_whitelist": _FORMAT_WHITELIST},
            io_open=_guarded_opener(path, refused, alias),
        )
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if refused:
            raise VideoError("open", f"refusing to let the file make FFmpeg open "
                                     f"{refused[0]!r} (a playlist or concat list?)") from None
        looks_like = _sniff(path) if getattr(exc, "errno", None) == errno.EINVAL else None
        if looks_like:
            # EINVAL is what a format off the whitelist gives; FFmpeg does not name the format.
            raise VideoError("open", f"refusing the file: it looks like {looks_like}, a format "
                                     f"that makes FFmpeg read other files or URLs") from None
        raise VideoError("open", f"FFmpeg cannot open the file: {_reason(exc)}"
                                 f"{_damage_hint(path)}") from None
    demuxer = container.format.name.split(",")[0]
    if demuxer in _DEMUXERS_THAT_OPEN_OTHER_FILES:
        container.close()
        raise VideoError("open", f"refusing container format {container.format.name!r}: it "
                                 "reads other files or URLs")
    if demuxer in _NOT_VIDEO_DEMUXERS or demuxer.endswith("_pipe"):
        container.close()
        raise VideoError("open", f"a still image or text ({container.format.name}), not a "
                                 "video")
    return container


def _ffprobe_seconds(ticks: int, time_base: Fraction) -> float:
    # ffprobe prints stream durations with %f (6 decimals); the reference parsed that text.
    return float(f"{ticks * float(time_base.numerator) / time_base.denominator:f}")


def probe_container(container, path: str = "") -> VideoInfo:
    streams = container.streams.video
    if not streams:
        raise VideoError("probe", "no video stream")
    stream = streams[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise VideoError("probe", f"video stream has no frame size ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise VideoError("probe", f"frame size {width}x{height} is beyond the "
                                  f"{MAX_PIXELS // 1_000_000} Mpixel limit")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise VideoError("probe", f"frame size {width}x{height}: aspect ratio beyond "
                                  f"{MAX_ASPECT_RATIO}:1")
    rate = stream.average_rate
    if not rate or rate <= 0:
        raise VideoError("probe", "video stream has no average frame rate (avg_frame_rate 0/0)")
    fps = math.floor(rate)
    if fps < 1:
        raise VideoError("probe", f"average frame rate {float(rate):.3g} is below 1 fps")
    duration = nb_frames = None
    if stream.duration is not None and stream.frames:
        duration = _ffprobe_seconds(stream.duration, stream.time_base)
        nb_frames = int(stream.frames)
    return VideoInfo(width, height, fps, duration, nb_frames)


def probe(path: str | os.PathLike) -> VideoInfo:
    with open_video(path) as container:
        return probe_container(container, os.fspath(path))


class _Scaler:
    """A filter graph doing the pixel work of the reference's command for frames of one
    size and format: `chain` after a buffer source, ending in rgb24."""

    def __init__(self, frame, time_base: Fraction, chain: list[tuple[str, str]]):
        self.graph = av.filter.Graph()  # owns the filter contexts: keep it alive
        node = self.source = self.graph.add_buffer(width=frame.width, height=frame.height,
                                                   format=frame.format, time_base=time_base)
        for name, args in chain + [("format", "pix_fmts=rgb24")]:
            nxt = self.graph.add(name, args) if args else self.graph.add(name)
            node.link_to(nxt)
            node = nxt
        self.sink = self.graph.add("buffersink")
        node.link_to(self.sink)
        self.graph.configure()

    def __call__(self, frame) -> np.ndarray:
        self.source.push(frame)
        return self.sink.pull().to_ndarray(format="rgb24")


class _Picture:
    """A decoded frame and its scaled versions, made once however many outputs use it.

    `graph`: how many times the CLI had rebuilt its filter graph when this frame arrived.
    """

    __slots__ = ("frame", "matrix", "graph", "scaled")

    def __init__(self, frame, graph: int, matrix: Optional[tuple[int, ...]]):
        self.frame = frame
        self.matrix = matrix
        self.graph = graph
        self.scaled: dict[tuple, np.ndarray] = {}

    def shape_key(self) -> tuple:
        frame = self.frame
        return frame.width, frame.height, frame.format.name, self.matrix


class _Branch:
    """One decode spec: the fps filter and the CLI's output sync, then the picture size."""

    def __init__(self, spec: DecodeSpec, info: VideoInfo, time_base: Fraction):
        self.spec = spec
        self.dims = output_dims(info.width, info.height, spec.size)
        self.fps = FpsSelector(parse_rate(spec.fps), time_base)
        self.sync = OutputSync()

    def push(self, picture: _Picture, time: Optional[int]) -> list[_Picture]:
        return [out for held, k in self.fps.push(picture, time)
                for out in self.sync.push(held, k)]

    def finish(self, end_time: Optional[int]) -> list[_Picture]:
        out = [copy for held, k in self.fps.finish(end_time) for copy in self.sync.push(held, k)]
        return out + self.sync.finish()


class _Renderer:
    """The RGB array of a picture as one branch's output shows it.

    In the CLI's first filter graph, `scale` converts to rgb24 itself, so one scaled frame
    serves every branch of that size and the crop is a slice (byte-identical to the crop
    filter). A graph the CLI rebuilt (the frames changed size, format or rotation) also
    gets the CLI's "autoscale" back to the first graph's output size, with the CLI's
    default bicubic flags; that filter then does the RGB conversion, so its pixels differ
    and are made per branch.
    """

    def __init__(self, time_base: Fraction):
        self.time_base = time_base
        self.scalers: dict[tuple, _Scaler] = {}
        # (frame shape key, colour tags, output dims) -> (DeviceGeometry or None, why not)
        self.geometries: dict[tuple, tuple] = {}

    def __call__(self, picture: _Picture, branch: _Branch) -> np.ndarray:
        spec, (width, height) = branch.spec, branch.dims
        rebuilt = picture.graph > 0
        key = (width, height) + ((spec.crop, spec.size) if rebuilt else ())
        rgb = picture.scaled.get(key)
        if rgb is None:
            chain = rotation_filters(picture.matrix) + [scale_filter(width, height)]
            if rebuilt:
                out_w, out_h = (spec.size, spec.size) if spec.crop else (width, height)
                if spec.crop:
                    chain.append(crop_filter(width, height, spec.size))
                chain.append(("scale", f"{out_w}:{out_h}:flags=bicubic"))
            scaler_key = picture.shape_key() + key
            scaler = self.scalers.get(scaler_key)
            if scaler is None:
                scaler = self.scalers[scaler_key] = _Scaler(picture.frame, self.time_base, chain)
            rgb = picture.scaled[key] = scaler(picture.frame)
            rgb.flags.writeable = False  # shared by every output that repeats this frame
        if spec.crop and not rebuilt:
            x, y = crop_offset(width, height, spec.size)
            rgb = rgb[y:y + spec.size, x:x + spec.size]
        return rgb

    def device_pick(self, picture: _Picture, branch: _Branch) -> DevicePick:
        """The picture as the device path takes it: with its geometry, or without and why."""
        if picture.graph > 0:
            return DevicePick(picture, branch, self, None, "the frames change size, format "
                              "or orientation mid-stream (the CLI rebuilt its graph)")
        frame = picture.frame
        # The colour tags can change without a graph rebuild; the scaler follows them.
        key = picture.shape_key() + (int(frame.color_range), int(frame.colorspace)) + branch.dims
        known = self.geometries.get(key)
        if known is None:
            turn = quarter_turn(rotation_filters(picture.matrix))
            geometry = frame_geometry(picture.frame, turn, *branch.dims)
            reason = geometry.unsupported()
            known = self.geometries[key] = (None if reason else geometry, reason)
        geometry, reason = known
        if geometry is not None and branch.spec.crop:
            geometry = geometry.centre_crop(branch.spec.size)
        return DevicePick(picture, branch, self, geometry, reason)


@dataclass
class DecodeReport:
    """How cleanly a stream decoded; filled in by decode_container and judged by assess()."""

    # Both on the reference's timeline (seconds from the file's start, see timeline.py):
    declared: Optional[float] = None  # where the container's header says the stream ends
    end: Optional[float] = None  # where the last decoded frame ends
    packets: int = 0  # non-empty packets read
    rejected: int = 0  # packets the decoder refused (skipped, as the ffmpeg CLI does)
    concealed: int = 0  # frames the decoder flagged corrupt (error concealment)
    frames: int = 0  # frames decoded and fed to the filter graph
    first_error: str = ""
    read_error: str = ""  # a demuxer error that ended reading before the end of the file
    # Where the features follow FFmpeg 5.1's CLI but the reference's FFmpeg 4.x would have
    # given other frames (docs/fidelity.md, "Knowingly different"); one line each.
    fidelity_notes: list = field(default_factory=list)


def _parse_hms(text: str) -> Optional[float]:
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def declared_end(container, stream) -> Optional[float]:
    """Where the file's header says the video stream ends, in seconds of the container's
    own timeline; None when it promises nothing trustworthy (durations FFmpeg estimates
    from timestamps or the bitrate do not count)."""
    demuxer = container.format.name.split(",")[0]
    if demuxer not in _HEADER_DURATION_FORMATS:
        return None
    if stream.duration and stream.duration > 0:  # a track duration, from the track's start
        return float((stream.duration + (stream.start_time or 0)) * stream.time_base)
    # Matroska's per-track DURATION tag and its segment duration are end times already.
    tagged = _parse_hms(stream.metadata.get("DURATION", ""))
    if tagged:
        return tagged
    if demuxer == "matroska" and len(container.streams) == 1 and container.duration \
            and container.duration > 0:
        return container.duration / 1e6
    return None


def assess(report: DecodeReport) -> Optional[tuple[str, str]]:
    """("failure" | "warning", message) for a decode that did not go cleanly, else None.

    Policy (docs/reliability.md): a stream that ends well before its header says (a cut
    download), that could not be read to its end with no header to tell how much is missing,
    or whose packets are mostly damaged fails; a few damaged packets in a stream that decodes
    to its end give features (what the reference's ffmpeg CLI gave) and a warning.
    """
    first = f" (first error: {report.first_error})" if report.first_error else ""
    if report.frames == 0:
        if report.rejected:
            return "failure", (f"no frame could be decoded: the decoder rejected all "
                               f"{report.rejected} packets{first}")
        return "failure", "no frame could be decoded" + (
            f": {report.read_error}" if report.read_error else "")
    why = f" ({report.read_error})" if report.read_error else ""
    if report.declared is not None and report.end is not None:
        if report.declared - report.end > max(1.0, 0.01 * report.declared):
            return "failure", (f"truncated: the video stream ends at {report.end:.2f} s but "
                               f"the file declares {report.declared:.2f} s (an incomplete "
                               f"download or copy?){why}")
    elif report.read_error:
        return "failure", (f"the file could not be read to its end: reading stopped after "
                           f"{report.end or 0:.2f} s{why}")
    damaged = report.rejected + report.concealed
    if damaged > MAX_DAMAGED_SHARE * max(report.packets, 1):
        return "failure", (f"damaged stream: {report.rejected} of {report.packets} packets "
                           f"could not be decoded and {report.concealed} frames were "
                           f"concealed, over the {MAX_DAMAGED_SHARE:.0%} limit{first}")
    if damaged or report.read_error:
        return "warning", (f"features written from a damaged stream: {report.rejected} of "
                           f"{report.packets} packets could not be decoded and "
                           f"{report.concealed} frames were concealed{first}{why}; rows "
                           f"near the damage may show broken pictures")
    return None


CUT_SHORT = "a packet cut short (the file ends inside it)"


def _timed_frames(container, stream, clock: InputClock, report: DecodeReport,
                  on_frame: Optional[Callable[[], None]]):
    """Decoded frames with the time the CLI's filter graph gives them (stream time base);
    returns the end-of-stream time. Packets the decoder rejects are skipped and a read error
    ends the stream (decoder flushed), as the ffmpeg CLI does."""
    codec = stream.codec_context
    packets = container.demux(stream)
    seen_cut_short = False
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.EOFError:
            break
        except av.error.FFmpegError as exc:
            report.read_error = f"read error: {_reason(exc)}"
            break
        if not packet.size and packet.pts is None and packet.dts is None:
            continue  # PyAV's end-of-stream marker: the flush below does its job
        stamps = clock.packet(packet.pts, packet.dts, packet.duration or 0)
        packet.pts, packet.dts = stamps.pts, stamps.dts
        if not packet.size:  # an empty packet the demuxer sent: timestamps only
            clock.frames([])
            continue
        report.packets += 1
        # A packet the demuxer could read only in part (the file ends inside it) is damage
        # whatever the decoder makes of it: one decoder thread rejects it, frame threads
        # take it without an error. Counted here, so the verdict is the same for both.
        cut_short = bool(packet.is_corrupt)
        if cut_short:
            report.first_error = report.first_error or CUT_SHORT
            seen_cut_short = True
        try:
            frames = codec.decode(packet)
        except av.error.FFmpegError as exc:
            report.rejected += 1
            report.first_error = report.first_error or _reason(exc)
            clock.rejected()
            continue
        report.rejected += cut_short
        times = clock.frames([(f.pts, f.dts, f.duration) for f in frames])
        for frame, time in zip(frames, times):
            if on_frame is not None:
                on_frame()
            yield frame, time
    try:
        frames = codec.decode(None)
    except av.error.FFmpegError as exc:
        # Frame threads report a packet's error on a later call. One on the flush after a
        # packet cut short (always the file's last) is that packet's, counted already.
        if not seen_cut_short:
            report.rejected += 1
            report.first_error = report.first_error or _reason(exc)
        frames = []
    for frame in frames:
        time = clock.drained(frame.pts, frame.dts, frame.duration)
        if on_frame is not None:
            on_frame()
        yield frame, time
    return clock.end()


def _account(report: DecodeReport, frame, time: Optional[int], time_base: float,
             default_step: float) -> None:
    report.frames += 1
    report.concealed += bool(frame.is_corrupt)
    if time is not None:
        step = frame.duration * time_base if frame.duration else default_step
        report.end = max(report.end or 0.0, time * time_base + step)


Frames = Generator[tuple[int, np.ndarray], None, DecodeReport]  # returns the report


def decode(path: str | os.PathLike, specs: Sequence[DecodeSpec], info: VideoInfo | None = None,
           threads: int = 0, on_frame: Optional[Callable[[], None]] = None,
           scale_on: str = "cpu") -> Frames:
    """Open `path` and yield (branch index, HxWx3 uint8 RGB frame), see decode_container."""
    path = os.fspath(path)
    with open_video(path) as container:
        return (yield from decode_container(container, specs,
                                            info or probe_container(container, path), threads,
                                            on_frame, scale_on))


def decode_container(container, specs: Sequence[DecodeSpec], info: VideoInfo,
                     threads: int = 0, on_frame: Optional[Callable[[], None]] = None,
                     scale_on: str = "cpu") -> Frames:
    """Yield (branch index, HxWx3 uint8 RGB frame): per branch, exactly the frames the
    reference's ffmpeg command wrote for that spec, in order; return a DecodeReport
    (`report = yield from decode_container(...)`).

    The compressed stream is decoded once for every branch; a source frame is scaled once
    per output size however many outputs repeat it. `on_frame()` is called once per decoded
    frame, before any is picked: the heartbeat the --video_timeout watch goes by (the picks
    may keep few of the frames). The arrays are read-only views: several outputs can share
    one. Raises VideoError when the pixel conversion fails.

    scale_on="device": instead of RGB arrays, yield DevicePick values (the picked frames'
    YUV planes and how to convert them, for the device to scale and convert, or, where the
    device path does not reproduce the CPU graph, only the CPU graph's array).
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    for other in container.streams:
        if other.index != stream.index:
            other.discard = Discard.all  # what the CLI does with the streams it does not map
    facts = stream_facts(container, stream)
    report = DecodeReport()
    declared = declared_end(container, stream)
    if declared is not None:
        report.declared = declared - (facts.file_start or 0) / 1e6
    time_base = Fraction(stream.time_base)
    rate = stream.average_rate
    default_step = 1 / float(rate) if rate else 0.0
    branches = [_Branch(spec, info, time_base) for spec in specs]
    render = _Renderer(time_base)
    output = render.device_pick if scale_on == "device" else render
    clock = InputClock(facts)
    shape = None
    rebuilds = 0
    matrices: set = set()
    matrices_of = DisplayMatrices()
    shapes: set = set()
    notes: set = set()
    try:
        timed = _timed_frames(container, stream, clock, report, on_frame)
        while True:
            try:
                frame, time = next(timed)
            except StopIteration as stop:
                end_time = stop.value
                break
            _account(report, frame, time, float(time_base), default_step)
            picture = _Picture(frame, rebuilds, matrices_of(frame))
            if shape is not None and picture.shape_key() != shape:
                # The CLI rebuilds its filter graph when the frames change size, format or
                # rotation: a fresh fps filter, and the frame the old one held is lost.
                for branch in branches:
                    branch.fps.reset()
                picture.graph = rebuilds = rebuilds + 1
            shape = picture.shape_key()
            matrices.add(picture.matrix)
            if shape not in shapes:
                shapes.add(shape)
                notes.update(filter(None, (_one_tap_note(picture, branch.dims)
                                           for branch in branches)))
            for index, branch in enumerate(branches):
                for out in branch.push(picture, time):
                    yield index, output(out, branch)
        if report.frames:
            for index, branch in enumerate(branches):
                for out in branch.finish(end_time):
                    yield index, output(out, branch)
    except av.error.FFmpegError as exc:
        raise VideoError("decode", f"decoding failed: {_reason(exc)}") from None
    report.fidelity_notes = _orientation_notes(matrices) + sorted(notes)
    return report


def _one_tap_note(picture: _Picture, dims: tuple[int, int]) -> Optional[str]:
    """FFmpeg 5.1's libswscale converted a 4:2:0 frame whose (turned) size equals the output
    and whose height is odd with a cruder chroma rule than the 8.1 one we run (docs/
    fidelity.md section 5); the frame is then off by up to ~95 levels at sharp colour edges."""
    frame = picture.frame
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        return None
    width, height = frame.width, frame.height
    if any(name == "transpose" for name, _ in rotation_filters(picture.matrix)):
        width, height = height, width
    if (width, height) != dims or height % 2 == 0:
        return None
    return (f"the {width}x{height} frames need no scaling but have an odd height: their "
            f"chroma is interpolated as FFmpeg 8.1 does, which differs from FFmpeg 5.1's "
            f"(and 4.3's) at sharp colour edges")


def _orientation_notes(matrices: set) -> list[str]:
    """What FFmpeg 4.x's autorotation would have done otherwise: it turned every frame by
    the stream's matrix alone, never mirrored, and never followed per-frame orientation."""
    notes = []
    if len(matrices) > 1:
        notes.append("the display orientation changes between frames (per-frame orientation "
                     "data): rotated frame by frame as FFmpeg 5.1's CLI does; FFmpeg 4.x "
                     "used one orientation for the whole video")
    if any(m is not None and m[0] * m[4] - m[1] * m[3] < 0 for m in matrices):
        notes.append("the display matrix mirrors the picture: flipped as FFmpeg 5.1's CLI "
                     "does; FFmpeg 4.x only rotated it")
    return notes
