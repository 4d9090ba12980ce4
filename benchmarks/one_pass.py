#!/usr/bin/env python3
"""All five models in ONE `extract` call vs five single-model calls, wall time on the same
videos, measured in one run (the saving is the four decodes the single call does not repeat).

    python benchmarks/one_pass.py --weights_dir DIR [--videos DIR] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4")


def run(models, videos: Path, out: Path, args) -> float:
    cmd = [sys.executable, "-m", "hero_features", "extract", "--video_path", str(videos),
           "--output_dir", str(out), "--device", args.device, "--weights_dir",
           str(args.weights_dir), "--no_progress", "--clip_len", args.clip_len,
           "--num_decoding_thread", str(args.workers), "--batch_size", str(args.batch_size)]
    for model in models:
        cmd += ["--model", model]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights_dir", type=Path, required=True)
    parser.add_argument("--videos", type=Path, default=ROOT / "tests" / "data" / "videos")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clip_len", default="3/2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPUs, device {args.device}, videos {args.videos}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        together = run(MODELS, args.videos, tmp / "together", args)
        separate = {m: run([m], args.videos, tmp / m, args) for m in MODELS}
    total = sum(separate.values())
    for model, seconds in separate.items():
        print(f"separate {model:<12} {seconds:8.1f} s")
    print(f"five separate calls    {total:8.1f} s")
    print(f"one call, five models  {together:8.1f} s")
    print(f"ratio separate/together: {total / together:.2f}x")


if __name__ == "__main__":
    main()
