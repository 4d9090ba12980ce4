"""Make small test videos with known content, using PyAV's encoders (no ffmpeg CLI needed)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BARS = 8  # frame index encoded as 8 vertical black/white bars, most significant bit first


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    bar = width // BARS
    for bit in range(BARS):
        if (index >> (BARS - 1 - bit)) & 1:
            frame[:, bit * bar:(bit + 1) * bar] = 255
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of index_frame, read at the bar centres (robust to scaling blur)."""
    height, width = frame.shape[:2]
    bar = width / BARS
    value = 0
    for bit in range(BARS):
        centre = frame[height // 2, int((bit + 0.5) * bar)].mean()
        value = (value << 1) | int(centre > 127)
    return value


def write_video(path: Path, frames: int, fps: Fraction | int = 25, width: int = 640,
                height: int = 360, codec: str = "libx264", container_format: str | None = None,
                content=index_frame, rotation: int | None = None) -> Path:
    """Encode `frames` frames whose pixels say their own index. Lossless x264 by default."""
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        if codec == "libx264":
            stream.options = {"qp": "0", "preset": "ultrafast"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(content(i, width, height), format="rgb24")
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)
