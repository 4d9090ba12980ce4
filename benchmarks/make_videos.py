#!/usr/bin/env python3
"""Make (and cache) 720p H.264 test videos of a given length for the benchmarks.

Each video is FFmpeg's lavfi `testsrc2` pattern at 1280x720, 30 fps, with a coloured box
sweeping across it (so consecutive frames differ everywhere the scaler looks), encoded
with libx264 `-preset ultrafast -crf 30` (about 4.5 Mbit/s; quick to make: roughly 200
frames/s on one core). No audio. Ultrafast streams use CAVLC and no B-frames, so they
decode somewhat faster than typical camera/YouTube H.264; the benchmarks compare two
decoders on the same files, so this only shifts both sides.

Videos are cached by length in a folder (default `$HERO_BENCH_VIDEOS`, else
`~/.cache/hero-features/bench-videos`) and written under a temporary name first, so an
interrupted run never leaves a truncated video behind.

    python benchmarks/make_videos.py 60 600 1200 [--dir DIR]    # seconds
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WIDTH, HEIGHT, FPS = 1280, 720, 30
CRF = 30


def default_dir() -> Path:
    env = os.environ.get("HERO_BENCH_VIDEOS")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "hero-features" / "bench-videos"


def video_name(seconds: int) -> str:
    return f"testsrc2_{WIDTH}x{HEIGHT}_{FPS}fps_{seconds}s_crf{CRF}.mp4"


def ffmpeg_command(seconds: int, out: Path) -> list[str]:
    box = 192
    graph = (f"[0][1]overlay=x='mod(t*320\\,W-w)':y='(H-h)/2+220*sin(t*1.3)'"
             ",format=yuv420p[v]")
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={seconds}",
        "-f", "lavfi", "-i", f"color=c=0x3060c0:size={box}x{box}:rate={FPS}:duration={seconds}",
        "-filter_complex", graph, "-map", "[v]",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", str(CRF), "-g", "250",
        "-movflags", "+faststart", str(out),
    ]


def make_video(seconds: int, directory: Path | None = None, quiet: bool = False) -> Path:
    """Path of the cached `seconds`-long test video, making it first if needed."""
    if seconds <= 0:
        raise ValueError(f"length must be a positive number of seconds, got {seconds}")
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not on PATH")
    directory = Path(directory) if directory is not None else default_dir()
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / video_name(seconds)
    if out.exists() and out.stat().st_size > 0:
        return out
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial.mp4")
    if not quiet:
        print(f"making {out} ({seconds} s of 720p30, ~{seconds * FPS / 200:.0f} s of work) ...",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        subprocess.run(ffmpeg_command(seconds, tmp), check=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    if not quiet:
        print(f"  done in {time.perf_counter() - start:.0f} s, "
              f"{out.stat().st_size / 1e6:.0f} MB", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("seconds", nargs="+", type=int, help="video lengths in seconds")
    ap.add_argument("--dir", type=Path, default=None,
                    help=f"cache folder (default {default_dir()})")
    args = ap.parse_args(argv)
    for seconds in args.seconds:
        print(make_video(seconds, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
