#!/usr/bin/env python3
"""CPU extract: how to split the cores between decode workers, their FFmpeg threads and
torch's intra-op threads.

Each configuration W:D:T is a fresh extract (under the allocator `extract` picks, as users
run it) with `--num_decoding_thread W`, D FFmpeg decoder threads per video (0: FFmpeg's choice) and T torch
threads (torch.set_num_threads), every configuration once per repeat, the order rotating
between repeats. Wall time of the whole command, median over the repeats.

    python benchmarks/cpu_threads.py --weights_dir DIR [--config 2:1:2 --config 1:1:2 ...]
        [--model slowfast --model resnet] [--videos DIR] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(config: str, argv: list[str]) -> int:
    """Run `hero_features.cli.main(argv)` with the thread split `config` forced."""
    from hero_features import allocator

    allocator.use_caching_allocator()  # restarts this child under tcmalloc, as extract does
    import torch

    from hero_features import config as run_config
    from hero_features.cli import main

    _, decoder, intra_op = (int(x) for x in config.split(":"))
    torch.set_num_threads(intra_op)
    run_config.decoder_threads = lambda workers, cores=None: decoder
    return main(argv)


def default_configs(cores: int) -> list[str]:
    half = max(1, cores // 2)
    return sorted({f"2:{half}:{cores}", f"1:{cores}:{cores}", f"1:1:{cores}", f"0:0:{cores}",
                   f"2:1:{cores}", f"1:1:{max(1, cores - 1)}", f"2:{half}:{max(1, cores - 1)}"})


def main() -> int:
    if sys.argv[1:2] == ["--child"]:  # --child W:D:T, then the extract's own arguments
        return child(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights_dir", "--weights-dir", type=Path,
                        default=os.environ.get("HERO_FEATURES_WEIGHTS") or None,
                        help="checkpoint folder (default: $HERO_FEATURES_WEIGHTS)")
    parser.add_argument("--videos", type=Path, default=ROOT / "tests" / "data" / "videos")
    parser.add_argument("--model", action="append",
                        help="models (default: all five), repeatable")
    parser.add_argument("--config", action="append", metavar="W:D:T",
                        help="decode workers : FFmpeg threads per worker : torch threads "
                             "(repeatable; default: a set around this machine's core count)")
    parser.add_argument("--clip_len", "--clip-len", default="3/2")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.weights_dir is None:
        parser.error("give --weights_dir or set HERO_FEATURES_WEIGHTS")
    cores = os.cpu_count() or 1
    configs = args.config or default_configs(cores)
    models = args.model or ["slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4"]
    print(f"# {cores} CPUs, models {','.join(models)}, videos {args.videos}, batch "
          f"{args.batch_size}, configs W:D:T {' '.join(configs)}", flush=True)
    walls: dict[str, list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="hero-threads-") as tmp:
        for repeat in range(args.repeats):
            shift = repeat % len(configs)
            for config in configs[shift:] + configs[:shift]:
                workers = config.split(":")[0]
                cmd = [sys.executable, __file__, "--child", config, "extract",
                       "--video_path", str(args.videos), "--output_dir",
                       str(Path(tmp) / f"{config}-{repeat}"), "--weights_dir",
                       str(args.weights_dir), "--device", "cpu", "--no_progress",
                       "--clip_len", args.clip_len, "--batch_size", str(args.batch_size),
                       "--num_decoding_thread", workers]
                for model in models:
                    cmd += ["--model", model]
                started = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                wall = time.perf_counter() - started
                if done.returncode != 0:
                    sys.stderr.write(done.stderr[-3000:])
                    raise SystemExit(f"{config} failed (exit {done.returncode})")
                allocator = next((line for line in done.stderr.splitlines()
                                  if line.startswith("allocator:")), "allocator: ?")
                walls[config].append(wall)
                load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                print(f"{config:>8} repeat {repeat + 1}: {wall:7.1f} s  {allocator}  "
                      f"load {load}", flush=True)
    best = min(configs, key=lambda c: statistics.median(walls[c]))
    for config in configs:
        median = statistics.median(walls[config])
        print(f"{config:>8}: median {median:7.1f} s  "
              f"({median / statistics.median(walls[best]):.2f}x the fastest)")
    print(f"fastest W:D:T on {cores} CPUs: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
