"""Open, probe and decode one video in-process with PyAV, as the reference's ffmpeg CLI did.

The reference ran `ffmpeg -i IN -filter_complex "[0]fps=fps=F[s0];[s0]scale=W:H[s1]
[;[s1]crop=S:S:X:Y[s2]]" -f rawvideo -pix_fmt rgb24 pipe:` and read the whole output into
RAM. We build the same filter graph (one branch per distinct decode spec behind a `split`)
and yield frames as the graph produces them, so memory does not grow with the video.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence

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
# image sequences, network session descriptions). A scraped "video" must never make us read
# anything but itself.
_DEMUXERS_THAT_OPEN_OTHER_FILES = frozenset({
    "hls", "applehttp", "concat", "dash", "webm_dash_manifest", "image2", "imf", "sdp", "rtp",
    "rtsp", "tee", "lavfi", "ffmetadata",
})


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


def _guarded_opener(path: str):
    """io_open hook: FFmpeg may open only the file it was given, nothing it names."""
    wanted = os.path.realpath(path)

    def io_open(url, flags, options):
        target = url[len("file:"):] if url.startswith("file:") else url
        if os.path.realpath(target) != wanted or flags != 1:  # 1 = AVIO_FLAG_READ
            raise PermissionError(f"refusing to open {url!r} named inside {path!r}")
        return open(wanted, "rb")

    return io_open


def open_video(path: str | os.PathLike) -> av.container.InputContainer:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError("open", f"file does not exist: {path}")
    if not os.path.isfile(path):
        raise VideoError("open", f"not a regular file: {path}")
    try:
        container = av.open(
            path,
            container_options={"protocol_whitelist": "file"},
            io_open=_guarded_opener(path),
        )
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError("open", f"FFmpeg cannot open the file: {exc}") from None
    if container.format.name.split(",")[0] in _DEMUXERS_THAT_OPEN_OTHER_FILES:
        container.close()
        raise VideoError("open", f"refusing container format {container.format.name!r}: it "
                                 "reads other files or URLs")
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


def _build_graph(stream, info: VideoInfo, specs: Sequence[DecodeSpec], rotation: float):
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    tail = source
    for name, args in rotation_filters(rotation):
        node = graph.add(name, args) if args else graph.add(name)
        tail.link_to(node)
        tail = node
    if len(specs) > 1:
        splitter = graph.add("split", str(len(specs)))
        tail.link_to(splitter)
    sinks = []
    for index, spec in enumerate(specs):
        node = splitter if len(specs) > 1 else tail
        out_pad = index if len(specs) > 1 else 0
        for name, args in filter_chain(spec, info.width, info.height):
            nxt = graph.add(name, args)
            node.link_to(nxt, out_pad, 0)
            node, out_pad = nxt, 0
        sink = graph.add("buffersink")
        node.link_to(sink)
        sinks.append(sink)
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


def decode(path: str | os.PathLike, specs: Sequence[DecodeSpec], info: VideoInfo | None = None,
           threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Open `path` and yield (branch index, HxWx3 uint8 RGB frame), see decode_container."""
    path = os.fspath(path)
    with open_video(path) as container:
        yield from decode_container(container, specs,
                                    info or probe_container(container, path), threads)


def decode_container(container, specs: Sequence[DecodeSpec], info: VideoInfo,
                     threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (branch index, HxWx3 uint8 RGB frame) in decode order, one graph for all specs.

    Frames of one branch come in time order. Raises VideoError on decode failures.
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    graph = source = sinks = None
    ready: list = []
    try:
        for frame in container.decode(stream):
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
            return
        source.push(None)
        _drain(sinks, ready)
        yield from ready
    except av.error.FFmpegError as exc:
        raise VideoError("decode", f"decoding failed: {exc}") from None
