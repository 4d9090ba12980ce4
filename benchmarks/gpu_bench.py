#!/usr/bin/env python3
"""End-to-end throughput of SlowFast + ResNet against the host's decode ceiling.

1. Makes a few 720p H.264 videos with PyAV's own encoder (no ffmpeg CLI needed).
2. Decode ceiling: one process per core runs the two models' decode graph + clip sampling
   alone (no model) over copies of the videos; video-seconds decoded per wall second.
3. End to end: `hero-features extract --model slowfast --model resnet` on the same videos
   with one decode worker per core; video-seconds per wall second.
Prints both and their ratio (target >= 0.9: the device never makes decoding wait).

    python benchmarks/gpu_bench.py [--device cuda] [--videos 8] [--seconds 60] [--smoke]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_videos(folder: Path, count: int, seconds: float, width: int, height: int) -> list[Path]:
    import av
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "v000.mp4"
    with av.open(str(first), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * 25)):
            frame = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256,
                              ((xx // 16 + yy // 16 + i) % 2) * 255], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    paths = [first]
    for k in range(1, count):  # copies: same decode cost, distinct outputs
        copy = folder / f"v{k:03d}.mp4"
        copy.write_bytes(first.read_bytes())
        paths.append(copy)
    return paths


def _decode_only(args) -> float:
    path, clip_len = args
    from hero_features.config import DecodeSettings, InputGroup  # no torch in these processes
    from hero_features.producer import decode_video_units

    groups = [InputGroup(("slowfast",), "clip", 224, True),
              InputGroup(("resnet",), "frame", 224, False)]
    seconds = 0.0
    settings = DecodeSettings(clip_len=Fraction(clip_len))
    for message in decode_video_units(0, str(path), groups, settings):
        if message.kind == "end":
            seconds = message.seconds
        elif message.kind == "error":
            raise RuntimeError(message)
    return seconds


def decode_ceiling(videos: list[Path], processes: int, clip_len: str) -> float:
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        total = sum(pool.map(_decode_only, [(v, clip_len) for v in videos], chunksize=1))
    return total / (time.perf_counter() - started)


def end_to_end(videos_dir: Path, out: Path, args, weights: Path, seconds: float,
               count: int) -> float:
    cmd = [sys.executable, "-m", "hero_features", "extract", "--model", "slowfast",
           "--model", "resnet", "--video_path", str(videos_dir), "--output_dir", str(out),
           "--device", args.device, "--weights_dir", str(weights), "--clip_len", args.clip_len,
           "--num_decoding_thread", str(args.workers), "--batch_size", str(args.batch_size),
           "--no_progress", "--precision", args.precision]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return seconds * count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--clip_len", default="2")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--weights_dir", type=Path)
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, 2 tiny videos: checks the script, measures nothing useful")
    args = parser.parse_args()
    width, height = 1280, 720
    if args.smoke:
        args.device, args.videos, args.seconds, args.workers = "cpu", 2, 3, 2
        width, height = 320, 180
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights_dir
        if weights is None:
            weights = tmp / "weights"
            subprocess.run([sys.executable, str(ROOT / "tests" / "tools" / "make_checkpoints.py"),
                            str(weights), "--formats", "slowfast,resnet"], check=True,
                           stdout=subprocess.DEVNULL)
        videos = make_videos(tmp / "videos", args.videos, args.seconds, width, height)
        ceiling = decode_ceiling(videos, args.workers, args.clip_len)
        e2e = end_to_end(tmp / "videos", tmp / "out", args, weights, args.seconds, args.videos)
    print(f"host: {os.cpu_count()} CPUs, device {args.device}, {args.videos} x "
          f"{args.seconds:g} s {width}x{height} H.264, clip_len {args.clip_len}, "
          f"{args.workers} decode processes, precision {args.precision}")
    print(f"decode ceiling (graph + sampling, no model): {ceiling:8.1f} video-s/s")
    print(f"end to end slowfast + resnet:               {e2e:8.1f} video-s/s")
    print(f"ratio end-to-end / ceiling: {e2e / ceiling:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
