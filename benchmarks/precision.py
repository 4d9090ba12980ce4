#!/usr/bin/env python3
"""What --precision fp16 / bf16 keep of the fp32 features, per model (centred cosine).

Runs `hero-features extract` on the sample videos once per precision and compares each
precision's rows with the fp32 rows of the same run, with the centring mean taken over all
fp32 rows of that model (as tools/compare.py does against goldens).

    python benchmarks/precision.py --weights_dir DIR [--device cuda] [--models resnet,slowfast]
        [--videos DIR]   # e.g. a few short videos: CPU fp16 3-D convolutions take ~50 s a clip
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT / "tests" / "data" / "videos"
ALL = "slowfast,mil-nce,resnet,clip-vit,clip-rn50x4"


def extract(out: Path, precision: str, args) -> None:
    subprocess.run([sys.executable, "-m", "hero_features", "extract", "--model", args.models,
                    "--video_path", str(args.videos), "--output_dir", str(out), "--clip_len", "3/2",
                    "--device", args.device, "--weights_dir", str(args.weights_dir),
                    "--precision", precision, "--no_progress", "--batch_size", "16"],
                   check=True)


def rows(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p)["features"].astype(np.float64) for p in sorted(folder.glob("*.npz"))}


def centred_cos(ref: dict, cand: dict) -> tuple[float, float, float]:
    mean = np.concatenate(list(ref.values())).mean(axis=0)
    cos, rel = [], []
    for name, r in ref.items():
        c = cand[name]
        a, b = r - mean, c - mean
        cos.extend((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
        rel.append(np.linalg.norm(c - r) / np.linalg.norm(r))
    return min(cos), float(np.mean(cos)), max(rel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights_dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=ALL)
    parser.add_argument("--precisions", default="fp16,bf16")
    parser.add_argument("--videos", type=Path, default=VIDEOS,
                        help="folder of videos (default: the sample videos)")
    args = parser.parse_args()
    print(f"# machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extract(tmp / "fp32", "fp32", args)
        print("| model | precision | min centred cos | mean centred cos | max rel. L2 error |")
        print("|---|---|---|---|---|")
        for precision in args.precisions.split(","):
            try:
                extract(tmp / precision, precision, args)
            except subprocess.CalledProcessError as exc:
                print(f"| all | {precision} | failed: exit {exc.returncode} | | |")
                continue
            for model in args.models.split(","):
                ref = rows(tmp / "fp32" / f"{model}_features")
                cand = rows(tmp / precision / f"{model}_features")
                low, mean, rel = centred_cos(ref, cand)
                print(f"| {model} | {precision} | {low:.5f} | {mean:.5f} | {rel:.4f} |")


if __name__ == "__main__":
    main()
