"""Generate a corpus of broken, unusual and hostile "videos" (nothing of it is stored in the repo).

`build(root)` writes every case under `root` and returns the `Case`s it could make, each with
the outcome the extractor must give: features, features plus one warning line, or one failure
line. Everything is made with PyAV (plus a few hand-written bytes), so no ffmpeg CLI is needed.
All videos are tiny (160x120, at most a few seconds) to keep a run over the corpus cheap.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import av
import numpy as np

from videos import index_frame

WIDTH, HEIGHT, FPS = 160, 120, 25

FEATURES, WARNING, FAILURE = "features", "warning", "failure"


@dataclass(frozen=True)
class Case:
    name: str  # path under the corpus root
    what: str  # one line for the reliability table
    expect: str  # FEATURES | WARNING | FAILURE
    make: Callable[[Path], None] = field(repr=False, compare=False)
    stage: str = ""  # the logged stage, for WARNING and FAILURE
    match: str = ""  # regex the logged message must match (case-insensitive)
    rows: Optional[int] = None  # feature rows when known by construction (resnet, clip_len 1.5)
    same_as: str = ""  # a case whose features these must equal (same pictures, other wrapping)
    regular: bool = True  # a regular file (a folder scan lists it)
    requires: str = ""  # what must be available to build it ("" = always)


# -- making pictures and videos ---------------------------------------------------------------

def picture(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The index bars of tests/videos.py over noise, so packets are big enough for damage to
    land inside picture data and neighbouring feature rows differ."""
    frame = index_frame(index, width, height)
    noise = np.random.default_rng(index).integers(0, 64, (height, width, 3), dtype=np.uint8)
    frame[height // 3:] = noise[height // 3:] + np.uint8(96)
    return frame


def encode(path: Path, frames: int, *, fps=FPS, codec: str = "libx264",
           pix_fmt: str = "yuv420p", container_format: Optional[str] = None,
           width: int = WIDTH, height: int = HEIGHT, pts: Optional[Sequence[int]] = None,
           time_base: Optional[Fraction] = None, stream_options: Optional[dict] = None,
           container_options: Optional[dict] = None, rotation: Optional[int] = None) -> Path:
    """Encode `frames` pictures; `pts` (in `time_base`) gives them explicit timestamps."""
    with av.open(str(path), "w", format=container_format,
                 options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": str(FPS), **(stream_options or {})}
        elif stream_options:
            stream.options = stream_options
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(i, width, height), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)


def good_mp4(path: Path, frames: int = 3 * FPS, faststart: bool = False) -> Path:
    return encode(path, frames, container_format="mp4",
                  container_options={"movflags": "faststart"} if faststart else None)


def _mdat_span(data: bytes) -> tuple[int, int]:
    """(first payload byte, end) of the top-level mdat box of an mp4."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"mdat":
            return offset + 8, min(offset + size, len(data))
        offset += size
    raise ValueError("no mdat box")


def _derived(make_source: Callable[[Path], Path], change: Callable[[bytes], bytes]):
    def make(path: Path) -> None:
        source = path.with_name(f".source.{path.name}")
        make_source(source)
        data = source.read_bytes()
        source.unlink()
        path.write_bytes(change(data))
    return make


def _cut_at(fraction: float):
    return lambda data: data[:int(len(data) * fraction)]


def _cut_mid_mdat(data: bytes) -> bytes:
    start, end = _mdat_span(data)
    return data[:(start + end) // 2]


def _scramble_mdat(fraction: float, seed: int, spread: bool):
    """Overwrite `fraction` of the mdat payload with random bytes: one block in the middle, or
    (spread) many 200-byte blocks all along it."""
    def change(data: bytes) -> bytes:
        start, end = _mdat_span(data)
        out = bytearray(data)
        rng = random.Random(seed)
        length = int((end - start) * fraction)
        if spread:
            for block in range(start, end - 200, max(200, int(200 / fraction))):
                out[block:block + 200] = rng.randbytes(200)
        else:
            middle = (start + end - length) // 2
            out[middle:middle + length] = rng.randbytes(length)
        return bytes(out)
    return change


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def mp4_without_streams(path: Path) -> None:
    """ftyp + moov holding only an mvhd: a well-formed mp4 with no tracks at all."""
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd = _box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, 0)
                + struct.pack(">IH", 0x10000, 0x100) + bytes(10) + matrix + bytes(24)
                + struct.pack(">I", 1))
    path.write_bytes(_box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
                     + _box(b"moov", mvhd))


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\0" + bytes(width * 3) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def jpeg_bytes() -> bytes:
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = 64, 48, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(picture(0, 64, 48), format="rgb24").reformat(
        format="yuvj420p")
    return b"".join(bytes(p) for p in codec.encode(frame)) + \
        b"".join(bytes(p) for p in codec.encode())


def audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000)
        samples = (np.sin(np.arange(48000) / 48000 * 2 * np.pi * 440) * 0.3).astype(np.float32)
        for start in range(0, 48000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="flt",
                                               layout="mono")
            frame.sample_rate = 48000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def y4m_with_huge_size(path: Path) -> None:
    """A y4m header declaring 16000x16000 (256 Mpixel frames, within FFmpeg's own size limit)
    followed by a few bytes: decoding it would allocate ~400 MB per frame."""
    path.write_bytes(b"YUV4MPEG2 W16000 H16000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(64))


def hls_playlist(target: str) -> bytes:
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{target}\n"
            "#EXT-X-ENDLIST\n").encode()


def ffconcat_list(target: str) -> bytes:
    return f"ffconcat version 1.0\nfile '{target}'\n".encode()


def _write(data: bytes):
    return lambda path: path.write_bytes(data)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dangling(path: Path) -> None:
    os.symlink("this-target-does-not-exist.mp4", path)


def _unreadable(path: Path) -> None:
    good_mp4(path)
    path.chmod(0)


def has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except Exception:
        return False
    return True


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def _vfr(path: Path) -> Path:
    """40 frames at irregular times between 0 and 3.9 s (1 ms time base), in Matroska."""
    times = [0] + sorted(random.Random(3).sample(range(20, 3900, 10), 39))
    return encode(path, 40, container_format="matroska", fps=10, pts=times,
                  time_base=Fraction(1, 1000))


def _latin1(name: str) -> str:
    """`name` with its "e" acute as the single Latin-1 byte 0xE9: not UTF-8, so Python holds
    it as a lone surrogate, as it does for such names found on disk."""
    return os.fsdecode(name.encode("utf-8").replace("é".encode("utf-8"), b"\xe9"))


# -- the cases --------------------------------------------------------------------------------
# Rows: resnet at clip_len 1.5 samples at 2/3 fps with FFmpeg's fps filter, which keeps
# round(seconds * 2/3) frames: 2 for 3 s, 3 for 4 s (checked against the ffmpeg CLI, the
# reference's decoder). Videos under 1.6 s are sampled at 2 fps (docs/fidelity.md 3.4), and one
# under 0.25 s then gets no frame at all, as with the reference.
SECONDS = 3
ROWS = 2
V = SECONDS * FPS
_VP9 = {"deadline": "realtime", "cpu-used": "8"}

CASES: list[Case] = [
    Case("good.mp4", "3 s H.264 160x120 25 fps, moov at the end", FEATURES, good_mp4,
         rows=ROWS),
    Case("zero_bytes.mp4", "empty file", FAILURE, _write(b""), "open", r"empty file"),
    *[Case(f"truncated_{int(f * 100)}pct_moov_at_end.mp4",
           f"first {int(f * 100)} % of an mp4 whose moov follows the mdat", FAILURE,
           _derived(good_mp4, _cut_at(f)), "open", r"cannot open.*invalid data.*moov index")
      for f in (0.1, 0.5, 0.9)],
    Case("truncated_in_header_faststart.mp4", "faststart mp4 cut inside its moov", FAILURE,
         _derived(lambda p: good_mp4(p, faststart=True), lambda d: d[:300]), "probe",
         r"no video stream"),
    Case("truncated_mid_mdat_faststart.mp4",
         "faststart mp4 cut in the middle of its mdat (header intact)", FAILURE,
         _derived(lambda p: good_mp4(p, 4 * FPS, faststart=True), _cut_mid_mdat), "decode",
         r"truncated: .* ends at .* declares 4\.00 s"),
    Case("truncated_webm.webm", "VP9 WebM cut at 60 %", FAILURE,
         _derived(lambda p: encode(p, 4 * FPS, codec="libvpx-vp9", container_format="webm",
                                   stream_options=_VP9),
                  _cut_at(0.6)), "decode", r"truncated: .* declares 4\.00 s",
         requires="libvpx-vp9"),
    Case("corrupt_block_mid_stream.mp4",
         "2 % of the mdat overwritten with random bytes in the middle", WARNING,
         _derived(lambda p: good_mp4(p, 4 * FPS), _scramble_mdat(0.02, 1, spread=False)),
         "decode", r"damaged stream: [1-9]\d* of \d+ packets could not be decoded", rows=3),
    Case("corrupt_here_and_there.mp4", "random 200-byte blocks over 15 % of the mdat",
         FAILURE,
         _derived(lambda p: good_mp4(p, 4 * FPS), _scramble_mdat(0.15, 2, spread=True)),
         "decode", r"damaged stream: .* over the 10% limit"),
    Case("corrupt_all_along.mp4", "random 200-byte blocks over half of the mdat", FAILURE,
         _derived(lambda p: good_mp4(p, 4 * FPS), _scramble_mdat(0.5, 2, spread=True)),
         "decode", r"no frame could be decoded: the decoder rejected all"),
    Case("mp4_named_as.avi", "an mp4 with an .avi name", FEATURES, good_mp4,
         rows=ROWS, same_as="good.mp4"),
    Case("webm_named_as.mp4", "a VP9 WebM with an .mp4 name", FEATURES,
         lambda p: encode(p, V, codec="libvpx-vp9", container_format="webm",
                          stream_options=_VP9),
         rows=ROWS, same_as="vp9.webm", requires="libvpx-vp9"),
    Case("text_named_as.mp4", "a text file with an .mp4 name", FAILURE,
         _write(b"this is not a video\n" * 100), "open", r"cannot open.*invalid data"),
    Case("png_named_as.mp4", "a PNG image with an .mp4 name", FAILURE, _write(png_bytes()),
         "open", r"still image .*png_pipe"),
    Case("jpeg_named_as.mp4", "a JPEG image with an .mp4 name", FAILURE,
         lambda p: p.write_bytes(jpeg_bytes()), "open", r"still image .*jpeg_pipe"),
    Case("audio_only.mp4", "AAC audio, no video stream", FAILURE, audio_only, "probe",
         r"no video stream"),
    Case("no_streams.mp4", "mp4 with a moov but no tracks", FAILURE, mp4_without_streams,
         "probe", r"no video stream"),
    Case("framerate_0_0.ts", "one-frame MPEG-TS: avg_frame_rate 0/0", FAILURE,
         lambda p: encode(p, 1, container_format="mpegts"), "probe", r"avg_frame_rate 0/0"),
    Case("framerate_absurd_1e6.mp4", "3 frames 1 us apart: avg_frame_rate 1000000/1", FAILURE,
         lambda p: encode(p, 3, container_format="mp4", fps=1_000_000, pts=[0, 1, 2],
                          time_base=Fraction(1, 1_000_000)), "decode",
         r"too short: 3 decoded frame\(s\) spanning 3e-06 s"),
    Case("framerate_absurd_1e6_for_3s.mp4",
         "75 frames over 3 s in a 1/1000000 time base, declared 1000000 fps", FEATURES,
         lambda p: encode(p, V, container_format="mp4", fps=1_000_000,
                          pts=[i * 40_000 for i in range(V)],
                          time_base=Fraction(1, 1_000_000)), rows=ROWS),
    Case("framerate_half_fps.mp4", "3 frames 2 s apart: avg_frame_rate 1/2", FAILURE,
         lambda p: encode(p, 3, container_format="mp4", fps=Fraction(1, 2), pts=[0, 2, 4],
                          time_base=Fraction(1, 1)), "probe", r"below 1 fps"),
    Case("one_frame.mp4", "a single frame (0.04 s)", FAILURE,
         lambda p: encode(p, 1, container_format="mp4"), "decode",
         r"too short: 1 decoded frame\(s\) spanning 0\.04 s .* 2 fps"),
    Case("short_0.2s.mp4", "5 frames (0.2 s)", FAILURE,
         lambda p: encode(p, 5, container_format="mp4"), "decode", r"too short"),
    Case("short_0.5s.mp4", "13 frames (0.52 s)", FEATURES,
         lambda p: encode(p, 13, container_format="mp4"), rows=1),
    Case("huge_dimensions.y4m", "y4m header declaring 16000x16000", FAILURE,
         y4m_with_huge_size, "probe", r"16000x16000 is beyond"),
    Case("extreme_aspect_1600x32.mp4", "1600x32 frames (50:1)", FAILURE,
         lambda p: encode(p, V, container_format="mp4", width=1600, height=32), "probe",
         r"aspect ratio"),
    Case("odd_dimensions_161x97.mp4", "161x97 H.264 4:4:4", FEATURES,
         lambda p: encode(p, V, container_format="mp4", width=161, height=97,
                          pix_fmt="yuv444p"), rows=ROWS),
    Case("variable_frame_rate.mkv", "VFR: 40 frames at irregular times over 3.9 s", FEATURES,
         _vfr, rows=3),
    Case("rotated_90.mp4", "display matrix rotated 90 degrees", FEATURES,
         lambda p: encode(p, V, container_format="mp4", rotation=90), rows=ROWS),
    Case("yuv420p10le.mp4", "H.264 High 10 (10-bit 4:2:0)", FEATURES,
         lambda p: encode(p, V, container_format="mp4", pix_fmt="yuv420p10le"), rows=ROWS),
    Case("yuv444p.mp4", "H.264 4:4:4", FEATURES,
         lambda p: encode(p, V, container_format="mp4", pix_fmt="yuv444p"), rows=ROWS),
    Case("vp9.webm", "VP9 in WebM", FEATURES,
         lambda p: encode(p, V, codec="libvpx-vp9", container_format="webm",
                          stream_options=_VP9), rows=ROWS, requires="libvpx-vp9"),
    Case("av1.mkv", "AV1 in Matroska", FEATURES,
         lambda p: encode(p, V, codec="libsvtav1", container_format="matroska",
                          stream_options={"preset": "12"}),
         rows=ROWS, requires="libsvtav1+av1-decoder"),
    Case("mpeg2.mpg", "MPEG-2 video in an MPEG-PS", FEATURES,
         lambda p: encode(p, V, codec="mpeg2video", container_format="mpeg"), rows=ROWS),
    Case("mjpeg.avi", "Motion JPEG in AVI", FEATURES,
         lambda p: encode(p, V, codec="mjpeg", container_format="avi", pix_fmt="yuvj420p"),
         rows=ROWS),
    Case("non_ascii_vidéo_日本語.mp4", "non-ASCII (UTF-8) file name", FEATURES, good_mp4,
         rows=ROWS, same_as="good.mp4"),
    Case(_latin1("latin1_café.mp4"), "file name that is not UTF-8 (Latin-1 byte 0xE9)",
         FEATURES, good_mp4, rows=ROWS, same_as="good.mp4"),
    Case(_latin1("latin1_empty_é.mp4"), "empty file whose name is not UTF-8", FAILURE,
         _write(b""), "open", r"empty file"),
    Case("with space.mp4", "space in the file name", FEATURES, good_mp4, rows=ROWS,
         same_as="good.mp4"),
    Case("with,comma.mp4", "comma in the file name", FEATURES, good_mp4, rows=ROWS,
         same_as="good.mp4"),
    Case("sub dir ü/nested,video é.mp4", "space, comma and non-ASCII in folder and name",
         FEATURES, good_mp4, rows=ROWS, same_as="good.mp4"),
    Case("unreadable.mp4", "mode 000 (read by a process without CAP_DAC_OVERRIDE)", FAILURE,
         _unreadable, "open", r"permission denied", requires="unreadable"),
    Case("fifo.mp4", "a FIFO with a video name", FAILURE, _fifo, "open",
         r"not a regular file", regular=False),
    Case("dangling_symlink.mp4", "symlink to a missing file", FAILURE, _dangling, "open",
         r"dangling symlink|does not exist", regular=False),
    # FFmpeg 8 no longer probes a playlist as HLS unless it is named .m3u8 (those are not
    # collected as videos; test_hardening feeds one through a csv).
    Case("hls_playlist.mp4", "HLS playlist naming good.mp4, with an .mp4 name", FAILURE,
         _write(hls_playlist("good.mp4")), "open", r"cannot open.*invalid data"),
    Case("ffconcat_list.mp4", "ffconcat list naming good.mp4, with an .mp4 name", FAILURE,
         _write(ffconcat_list("good.mp4")), "open", r"refusing the file: .*ffconcat list"),
]


CASES_BY_NAME = {case.name: case for case in CASES}


def available(requirement: str) -> bool:
    if not requirement:
        return True
    if requirement == "unreadable":
        return can_make_unreadable()
    checks = {"libvpx-vp9": lambda: has_encoder("libvpx-vp9") and has_decoder("vp9"),
              "libsvtav1+av1-decoder": lambda: has_encoder("libsvtav1") and (
                  has_decoder("libdav1d") or has_decoder("av1"))}
    return checks[requirement]()


def can_make_unreadable() -> bool:
    """A mode-000 file denies reading unless we are root; then only a child without
    CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH is denied (see drop_file_capabilities)."""
    return os.geteuid() != 0 or _prctl() is not None


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _prctl():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def drop_file_capabilities() -> None:
    """preexec_fn for a root child: remove the two capabilities that let root read any file
    from the bounding set, so the exec'd program (and its children) really are denied."""
    if os.geteuid() != 0:
        return
    prctl = _prctl()
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError("prctl(PR_CAPBSET_DROP) failed; cannot make unreadable files")


def build(root: Path, cases: Sequence[Case] = CASES) -> list[Case]:
    """Write every buildable case under `root`; returns those made."""
    made = []
    for case in cases:
        if not available(case.requires):
            continue
        path = root / case.name
        path.parent.mkdir(parents=True, exist_ok=True)
        case.make(path)
        made.append(case)
    return made


def listening_socket() -> tuple[socket.socket, int]:
    """A TCP socket on 127.0.0.1 (any free port) for checking nothing connects to it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server, server.getsockname()[1]
