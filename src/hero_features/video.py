"""Open, probe and decode one video in-process with PyAV, as the reference's ffmpeg CLI did.

The reference ran `ffmpeg -i IN -filter_complex "[0]fps=fps=F[s0];[s0]scale=W:H[s1]
[;[s1]crop=S:S:X:Y[s2]]" -f rawvideo -pix_fmt rgb24 pipe:` and read the whole output into
RAM. We build the same filter graph (one branch per distinct decode spec behind a `split`)
and yield frames as the graph produces them, so memory does not grow with the video.
"""
from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Generator, Optional, Sequence

import av
import av.error
import av.filter
import numpy as np


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
    """What the reference's ffprobe call gave (REFERENCE 1.2)."""

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
    """(out_w, out_h): short side exactly `size`, long side truncated (REFERENCE 1.3)."""
    if height >= width:
        return size, int(height * size / width)
    return int(width * size / height), size


def crop_offset(out_w: int, out_h: int, size: int) -> tuple[int, int]:
    return int((out_w - size) / 2), int((out_h - size) / 2)


def filter_chain(spec: DecodeSpec, width: int, height: int) -> list[tuple[str, str]]:
    """The reference's filters for one branch, as (filter name, arguments) pairs."""
    out_w, out_h = output_dims(width, height, spec.size)
    # flags=bilinear: the reference environment's FFmpeg (<= 4) scaled bilinearly by default;
    # FFmpeg >= 5 defaults to bicubic, so the flag must be explicit.
    chain = [("fps", f"fps={spec.fps}"), ("scale", f"{out_w}:{out_h}:flags=bilinear")]
    if spec.crop:
        x, y = crop_offset(out_w, out_h, spec.size)
        chain.append(("crop", f"{spec.size}:{spec.size}:{x}:{y}"))
    # The CLI's `-pix_fmt rgb24` becomes a format filter before the sink; negotiation then
    # lets `scale` convert to RGB in the same swscale pass, as the reference's graph did.
    chain.append(("format", "pix_fmts=rgb24"))
    return chain


def rotation_filters(display_rotation: float) -> list[tuple[str, str]]:
    """The filters the ffmpeg CLI's autorotate inserts before the graph, for a display matrix
    whose counter-clockwise rotation is `display_rotation` degrees (PyAV's getattr(frame, "rotation", 0) or 0)."""
    theta = -round(display_rotation)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)  # the CLI's get_rotation()
    if abs(theta - 90) < 1:
        return [("transpose", "clock")]
    if abs(theta - 180) < 1:
        return [("hflip", ""), ("vflip", "")]
    if abs(theta - 270) < 1:
        return [("transpose", "cclock")]
    if abs(theta) > 1:
        return [("rotate", f"{theta}*PI/180")]
    return []


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


def _upsamples(spec: DecodeSpec, source_rate) -> bool:
    """True when the fps filter keeps (or duplicates) every source frame."""
    try:
        return bool(source_rate) and Fraction(spec.fps) >= Fraction(source_rate)
    except (ValueError, ZeroDivisionError):
        return False


def _branch_plan(specs: Sequence[DecodeSpec], source_rate) -> list[tuple[Optional[int], list[int]]]:
    """Which branches share one scaler: [(size or None, spec indices)].

    Scaling commutes with the fps filter (it only drops or repeats whole frames), so the
    pixels are the same in either order; only the work differs. Where some branch keeps
    every source frame (30 fps from a 25 fps video), every frame gets scaled anyway, so all
    branches of that size scale once and only then pick their frames. Other branches drop
    frames first (fps -> scale), as the reference's graph does.
    """
    shared: dict[int, list[int]] = {}
    for index, spec in enumerate(specs):
        if _upsamples(spec, source_rate):
            shared.setdefault(spec.size, [])
    plan: list[tuple[Optional[int], list[int]]] = []
    for index, spec in enumerate(specs):
        if spec.size in shared:
            shared[spec.size].append(index)
        else:
            plan.append((None, [index]))
    return [(size, members) for size, members in shared.items()] + plan


def _link_chain(graph, node, out_pad: int, chain):
    for name, args in chain:
        nxt = graph.add(name, args)
        node.link_to(nxt, out_pad, 0)
        node, out_pad = nxt, 0
    return node


def _fan_out(graph, node, count: int):
    """(node, output pad) pairs: the node itself, or a split of it into `count`."""
    if count == 1:
        return [(node, 0)]
    splitter = graph.add("split", str(count))
    node.link_to(splitter)
    return [(splitter, i) for i in range(count)]


def _build_graph(stream, info: VideoInfo, specs: Sequence[DecodeSpec], rotation: float):
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    tail = source
    for name, args in rotation_filters(rotation):
        node = graph.add(name, args) if args else graph.add(name)
        tail.link_to(node)
        tail = node
    sinks: list = [None] * len(specs)
    plan = _branch_plan(specs, stream.average_rate)
    for (size, members), (node, pad) in zip(plan, _fan_out(graph, tail, len(plan))):
        if size is not None:  # one scaler for every branch of this size
            chain = filter_chain(specs[members[0]], info.width, info.height)
            node = _link_chain(graph, node, pad, [c for c in chain if c[0] == "scale"])
            pad = 0
        outs = _fan_out(graph, node, len(members)) if size is not None else [(node, pad)]
        for index, (branch, branch_pad) in zip(members, outs):
            chain = filter_chain(specs[index], info.width, info.height)
            if size is not None:
                chain = [c for c in chain if c[0] != "scale"]
            sink = graph.add("buffersink")
            _link_chain(graph, branch, branch_pad, chain).link_to(sink)
            sinks[index] = sink
    graph.configure()
    # The caller must keep `graph` alive: its filter contexts are freed with it.
    return graph, source, sinks


def _drain(sinks, out: list) -> None:
    for index, sink in enumerate(sinks):
        while True:
            try:
                frame = sink.pull()
            except (BlockingIOError, av.error.EOFError):
                break
            out.append((index, frame.to_ndarray(format="rgb24")))


@dataclass
class DecodeReport:
    """How cleanly a stream decoded; filled in by decode_container and judged by assess()."""

    declared: Optional[float] = None  # seconds the container header says the stream lasts
    end: Optional[float] = None  # seconds from the stream start to the end of the last frame
    packets: int = 0  # non-empty packets read
    rejected: int = 0  # packets the decoder refused (skipped, as the ffmpeg CLI does)
    concealed: int = 0  # frames the decoder flagged corrupt (error concealment)
    frames: int = 0  # frames decoded and fed to the filter graph
    first_error: str = ""
    read_error: str = ""  # a demuxer error that ended reading before the end of the file


def _parse_hms(text: str) -> Optional[float]:
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def declared_duration(container, stream) -> Optional[float]:
    """Seconds the file's header promises for the video stream, None when it promises nothing
    trustworthy (durations FFmpeg estimates from timestamps or the bitrate do not count)."""
    if container.format.name.split(",")[0] not in _HEADER_DURATION_FORMATS:
        return None
    if stream.duration and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    tagged = _parse_hms(stream.metadata.get("DURATION", ""))  # Matroska's per-stream tag
    if tagged:
        return tagged
    if len(container.streams) == 1 and container.duration and container.duration > 0:
        return container.duration / 1e6  # the segment duration is this stream's own
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


def _decoded_frames(container, stream, report: DecodeReport):
    """Frames of `stream`, skipping packets the decoder rejects and stopping (with the
    decoder flushed) at a read error, as the ffmpeg CLI does."""
    packets = container.demux(stream)
    seen_cut_short = False
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.EOFError:
            break
        except av.error.FFmpegError as exc:
            report.read_error = f"read error: {_reason(exc)}"
            break
        if packet.size:
            report.packets += 1
        # A packet the demuxer could read only in part (the file ends inside it) is damage
        # whatever the decoder makes of it: one decoder thread rejects it, frame threads
        # take it without an error. Counted here, so the verdict is the same for both.
        cut_short = bool(packet.size and packet.is_corrupt)
        if cut_short:
            report.first_error = report.first_error or CUT_SHORT
            seen_cut_short = True
        try:
            frames = packet.decode()  # an empty packet flushes the decoder
        except av.error.FFmpegError as exc:
            # Frame threads report a packet's error on a later call. One on the flush after
            # a packet cut short (always the file's last) is that packet's, counted already.
            if packet.size or not seen_cut_short:
                report.rejected += 1
            report.first_error = report.first_error or _reason(exc)
            continue
        report.rejected += cut_short
        yield from frames
    try:  # the demuxer stopped before its final flush packet
        yield from stream.codec_context.decode(None)
    except av.error.FFmpegError:
        pass


Frames = Generator[tuple[int, np.ndarray], None, DecodeReport]  # returns the report


def decode(path: str | os.PathLike, specs: Sequence[DecodeSpec], info: VideoInfo | None = None,
           threads: int = 0, on_frame: Optional[Callable[[], None]] = None) -> Frames:
    """Open `path` and yield (branch index, HxWx3 uint8 RGB frame), see decode_container."""
    path = os.fspath(path)
    with open_video(path) as container:
        return (yield from decode_container(container, specs,
                                            info or probe_container(container, path), threads,
                                            on_frame=on_frame))


def decode_container(container, specs: Sequence[DecodeSpec], info: VideoInfo,
                     threads: int = 0, on_frame: Optional[Callable[[], None]] = None) -> Frames:
    """Yield (branch index, HxWx3 uint8 RGB frame) in decode order, one graph for all specs;
    return a DecodeReport (`report = yield from decode_container(...)`).

    Frames of one branch come in time order. Raises VideoError when the graph fails.
    `on_frame()` is called once per decoded frame, before any filtering: the heartbeat the
    --video_timeout watch goes by (the graph may keep few of the frames).
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    report = DecodeReport(declared=declared_duration(container, stream))
    rate = stream.average_rate
    default_step = 1 / float(rate) if rate else 0.0
    time_base = float(stream.time_base) if stream.time_base else 0.0
    start = stream.start_time * time_base if stream.start_time is not None else None
    graph = source = sinks = None
    ready: list = []
    try:
        for frame in _decoded_frames(container, stream, report):
            if on_frame is not None:
                on_frame()
            report.frames += 1
            report.concealed += bool(frame.is_corrupt)
            if frame.pts is not None:
                at = frame.pts * time_base
                start = at if start is None else start
                end = at + (frame.duration * time_base if frame.duration else default_step)
                report.end = max(report.end or 0.0, end - start)
            if graph is None:
                # The display matrix reaches us on the frames, so the graph (which needs
                # the rotation) is built when the first frame arrives.
                graph, source, sinks = _build_graph(stream, info, specs,
                                                    getattr(frame, "rotation", 0) or 0)
            source.push(frame)
            _drain(sinks, ready)
            yield from ready
            ready.clear()
        if graph is None:
            return report
        source.push(None)
        _drain(sinks, ready)
        yield from ready
    except av.error.FFmpegError as exc:
        raise VideoError("decode", f"decoding failed: {_reason(exc)}") from None
    return report
