#!/usr/bin/env python3
"""All five models in ONE `extract` call vs five single-model calls, wall time on the same
videos, measured in one run (the saving is the four decodes the single call does not repeat).

The decode stage alone is timed too, in this process (`producer.decode_video_units`, every
unit dropped): each model's graph on its own and the one split graph for all five. The target is that the
one call saves at least what the decodes it does not repeat cost:
    (sum of separate calls) - (one call)  >=  (sum of single-model decodes) - (one shared decode)

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
sys.path.insert(0, str(ROOT / "src"))
from fractions import Fraction  # noqa: E402

from hero_features.config import DecodeSettings, input_groups  # noqa: E402
from hero_features.manifest import find_videos  # noqa: E402
from hero_features.models import get_spec  # noqa: E402
from hero_features.producer import decode_video_units  # noqa: E402

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


def decode_seconds(models, videos, clip_len: Fraction) -> float:
    """Decode (and sample) every video for `models` in this process, units dropped."""
    groups = input_groups([get_spec(m) for m in models])
    settings = DecodeSettings(clip_len=clip_len)
    started = time.perf_counter()
    for index, path in enumerate(videos):
        for message in decode_video_units(index, str(path), groups, settings):
            if message.kind == "error":
                raise SystemExit(f"{path}: {message.reason}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights_dir", type=Path, required=True)
    parser.add_argument("--videos", type=Path, default=ROOT / "tests" / "data" / "videos")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clip_len", default="3/2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPUs, device {args.device}, videos {args.videos}")
    clip_len = Fraction(args.clip_len)
    files = find_videos(args.videos)
    decode_alone = {m: decode_seconds([m], files, clip_len) for m in MODELS}
    decode_shared = decode_seconds(MODELS, files, clip_len)
    together_runs, separate_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Interleaved and repeated: on a shared machine a load spike during one side would
        # otherwise decide the comparison; the best of each side is kept.
        for repeat in range(args.repeats):
            together_runs.append(run(MODELS, args.videos, tmp / f"together{repeat}", args))
            separate_runs.append({m: run([m], args.videos, tmp / f"{m}{repeat}", args)
                                  for m in MODELS})
    together = min(together_runs)
    separate = {m: min(r[m] for r in separate_runs) for m in MODELS}
    total = min(sum(r.values()) for r in separate_runs)
    print("one call, each repeat:   " + "  ".join(f"{t:.1f}" for t in together_runs))
    print("five calls, each repeat: " + "  ".join(f"{sum(r.values()):.1f}" for r in separate_runs))
    for model, seconds in separate.items():
        print(f"separate {model:<12} {seconds:8.1f} s (best)")
    print(f"five separate calls    {total:8.1f} s (best repeat)")
    print(f"one call, five models  {together:8.1f} s (best repeat)")
    print(f"ratio separate/together: {total / together:.2f}x")
    for model, seconds in decode_alone.items():
        print(f"decode only, {model:<12} {seconds:8.1f} s")
    print(f"decode only, one split graph for all five {decode_shared:8.1f} s")
    needed = sum(decode_alone.values()) - decode_shared
    saved = total - together
    print(f"saved by one call {saved:.1f} s; the decodes it does not repeat cost {needed:.1f} s: "
          f"target {'met' if saved >= needed else 'NOT met'}")


if __name__ == "__main__":
    main()
