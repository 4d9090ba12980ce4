#!/usr/bin/env python3
"""Decode-worker CPU per video-second: --scale-on cpu (the CPU graph) vs --scale-on device.

What a decode worker runs for a slowfast + resnet run (clip_len 2: slowfast at 30 fps, 224
centre crop, 32-frame clips; resnet at 0.5 fps, 398x224 uncropped), on a 720p and a 360p
H.264 video: `producer.decode_video_units`, the very function the workers call, with
`scale_on="cpu"` (decode, timeline, fps picks, the scale + rgb24 graph, crop, clip sampling,
the Units arrays) and with `scale_on="device"` (the same, but the picked frames' YUV planes
are packed instead of scaled). The shared-memory copy that follows is the same memcpy for
both and is left out. The device's own work (`device_runner.rgb_units` on those units) is
timed apart: here it runs on the CPU (one torch thread); on a GPU host it is the GPU's.

CPU time is this process's user+sys (decoder threads included); `--threads 1` (default)
decodes on one thread so that the device work, timed on the main thread, can be told
apart. Both paths run in one process, interleaved (the order alternates per repeat);
medians of `--repeats`. Before timing, the device path's units (converted) are checked to
equal the CPU path's.

The last line reads `decode CPU ratio 720p X.XX 360p Y.YY` (cpu path / device path, worker
side). Videos: lavfi testsrc2 + a moving box, x264 ultrafast crf 30 (as make_videos.py),
cached in $HERO_BENCH_VIDEOS or ~/.cache/hero-features/bench-videos.

    python benchmarks/device_scale.py [--seconds 20] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_videos  # noqa: E402

from hero_features.config import DecodeSettings, InputGroup  # noqa: E402
from hero_features.messages import Units  # noqa: E402
from hero_features.producer import decode_video_units  # noqa: E402

SOURCE_FPS = 30
GROUPS = (InputGroup(("slowfast",), "clip", 224, True),
          InputGroup(("resnet",), "frame", 224, False))


def make_video(width: int, height: int, seconds: int, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"testsrc2_{width}x{height}_{SOURCE_FPS}fps_{seconds}s_crf30.mp4"
    if out.exists() and out.stat().st_size > 0:
        return out
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not on PATH (needed to make the test videos)")
    box = max(16, height * 192 // 720)
    graph = (f"[0][1]overlay=x='mod(t*{width // 4}\\,W-w)':y='(H-h)/2+{height * 220 // 720}"
             f"*sin(t*1.3)',format=yuv420p[v]")
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial.mp4")
    rate = f"rate={SOURCE_FPS}:duration={seconds}"
    try:
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:{rate}",
                        "-f", "lavfi", "-i", f"color=c=0x3060c0:size={box}x{box}:{rate}",
                        "-filter_complex", graph, "-map", "[v]", "-c:v", "libx264",
                        "-preset", "ultrafast", "-crf", "30", "-g", "250", str(tmp)],
                       check=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _cpu() -> float:
    return time.process_time()


def worker_side(path: Path, scale_on: str, threads: int, keep: bool = False):
    """(CPU seconds, seconds of video, the Units messages if `keep`) of decode_video_units."""
    settings = DecodeSettings(clip_len=Fraction(2), threads=threads, scale_on=scale_on)
    start, seconds, kept = _cpu(), 0.0, []
    for message in decode_video_units(0, str(path), GROUPS, settings):
        if isinstance(message, Units):
            if keep:
                kept.append(message)
        elif message.kind == "end":
            seconds = message.seconds
        elif message.kind in ("error", "scaled-on-cpu"):
            raise SystemExit(f"{path.name}: {message}")
    return _cpu() - start, seconds, kept


def device_work(units: list, device: str) -> float:
    """CPU seconds of converting the device path's units, as the device runner does."""
    import torch

    from hero_features.device_runner import rgb_units

    began = time.thread_time()
    for message in units:
        rgb_units(torch.from_numpy(message.units).to(device), message.geometry)
    if device != "cpu":
        torch.cuda.synchronize()
    return time.thread_time() - began


def decode_only(path: Path, threads: int) -> float:
    start = _cpu()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        for _ in container.decode(stream):
            pass
    return _cpu() - start


def check_equal(path: Path, threads: int) -> list:
    """The device path's units, converted, are the CPU path's (a benchmark of wrong output is
    no use); returns the device path's units for the device-work timing."""
    import torch

    from hero_features.device_runner import rgb_units

    _, _, cpu = worker_side(path, "cpu", threads, keep=True)
    _, _, device = worker_side(path, "device", threads, keep=True)
    if len(cpu) != len(device) or any(m.geometry is None for m in device):
        raise SystemExit(f"{path.name}: the device path sent other messages")
    for expected, message in zip(cpu, device):
        got = rgb_units(torch.from_numpy(message.units), message.geometry).numpy()
        if not np.array_equal(got, expected.units):
            raise SystemExit(f"{path.name}: device output differs from the CPU graph's")
    return device


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="video length (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="FFmpeg decoder threads (default 1; 0 = FFmpeg's choice)")
    parser.add_argument("--device", default="cpu", help="where DeviceScaler runs (default cpu)")
    parser.add_argument("--video-dir", type=Path, default=None,
                        help="video cache folder (default $HERO_BENCH_VIDEOS or "
                             "~/.cache/hero-features/bench-videos)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # device work on the CPU: one thread, timed on this one
    directory = args.video_dir or make_videos.default_dir()
    print(f"machine: {machine()}; PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}), "
          f"torch {torch.__version__}, decoder threads {args.threads}, device {args.device}")
    ratios = {}
    for label, (width, height) in (("720p", (1280, 720)), ("360p", (640, 360))):
        path = make_video(width, height, args.seconds, directory)
        units = check_equal(path, args.threads)
        runs: dict[str, list] = {"cpu": [], "device": [], "decode": [], "work": []}
        length = 0.0
        for repeat in range(args.repeats):
            order = ("cpu", "device") if repeat % 2 == 0 else ("device", "cpu")
            for side in order:
                cpu, length, _ = worker_side(path, side, args.threads)
                runs[side].append(cpu)
            runs["decode"].append(decode_only(path, args.threads))
            runs["work"].append(device_work(units, args.device))
        graph, worker = statistics.median(runs["cpu"]), statistics.median(runs["device"])
        decode, work = statistics.median(runs["decode"]), statistics.median(runs["work"])
        ratios[label] = graph / worker
        print(f"{label} ({width}x{height}, {length:.1f} s): CPU s per video-s: cpu path "
              f"{graph / length:.4f}, device path (worker) {worker / length:.4f}, decode "
              f"alone {decode / length:.4f}; device work on {args.device} {work / length:.4f} "
              f"(apart); runs cpu {', '.join(f'{t:.2f}' for t in runs['cpu'])} s, device "
              f"{', '.join(f'{t:.2f}' for t in runs['device'])} s", flush=True)
    print(f"decode CPU ratio 720p {ratios['720p']:.2f} 360p {ratios['360p']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
