#!/usr/bin/env python3
"""Does batching buy speed on the CPU? Seconds per unit through each model at several batch
sizes, the way the device runner calls the models (`device_runner.device_features`: uint8
units in, normalisation, model, float16 rows out).

Each model is loaded once (synthetic or real checkpoints from --weights_dir), warmed up at
every batch size, then timed: for each repeat the batch sizes run in turn (the order
reverses every other repeat), each once, on random uint8 units of the model's input shape
(clips of 32 frames 224x224 for slowfast / mil-nce; 224x398 frames for resnet, 224x224 for
clip-vit, 288x288 for clip-rn50x4). Medians of `--repeats`, wall seconds per unit.

The extract command runs under tcmalloc (allocator.py); so should this script, or the
allocator's page faults are what gets measured: it restarts itself the same way unless
HERO_FEATURES_ALLOCATOR=system.

The last line reads `cpu seconds per unit, batch B / batch 1: slowfast X.XX, ...` for the
largest batch size B (below 1: batching is faster per unit).

    python benchmarks/cpu_batch.py --weights_dir DIR [--batches 1,4,8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

MODELS = ("slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4")
FRAME_SHAPES = {"resnet": (224, 398), "clip-vit": (224, 224), "clip-rn50x4": (288, 288)}


def unit_shape(spec) -> tuple:
    if spec.unit == "clip":
        return (32, spec.size, spec.size, 3)
    return (*FRAME_SHAPES[spec.name], 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights_dir", "--weights-dir", type=Path,
                        default=os.environ.get("HERO_FEATURES_WEIGHTS"),
                        help="checkpoints (default: $HERO_FEATURES_WEIGHTS)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,4,8", help="batch sizes (default 1,4,8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.weights_dir is None:
        parser.error("give --weights_dir (or set HERO_FEATURES_WEIGHTS)")

    from hero_features.allocator import describe, use_caching_allocator

    use_caching_allocator()  # as `hero-features extract` does (may restart this script)
    import numpy as np
    import torch

    from hero_features.config import RunConfig
    from hero_features.device_runner import DeviceRunner, device_features

    models = args.models.split(",")
    batches = sorted({int(b) for b in args.batches.split(",")})
    device = torch.device("cpu")
    config = RunConfig(models=models, clip_len=Fraction(3, 2), weights_dir=args.weights_dir,
                       download=False, progress=False)
    runner = DeviceRunner.for_config(config, device)
    print(f"# {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads, allocator {describe()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    rng = np.random.default_rng(0)
    ratios = {}
    for name in models:
        spec, module = runner.specs[name], runner.models[name]
        shape = unit_shape(spec)
        inputs = {b: torch.from_numpy(rng.integers(0, 256, (b, *shape), dtype=np.uint8))
                  for b in batches}

        def run(size: int) -> float:
            began = time.perf_counter()
            device_features(spec, module, inputs[size], device)
            return (time.perf_counter() - began) / size

        for size in batches:
            run(size)  # warm-up: first-call costs and the allocator's first growth
        times: dict[int, list] = {b: [] for b in batches}
        for repeat in range(args.repeats):
            for size in (batches if repeat % 2 == 0 else batches[::-1]):
                times[size].append(run(size))
        medians = {b: statistics.median(t) for b, t in times.items()}
        ratios[name] = medians[batches[-1]] / medians[batches[0]]
        print(f"{name} (unit {shape}): s per unit " + ", ".join(
            f"batch {b} {medians[b]:.3f} ({' '.join(f'{t:.3f}' for t in times[b])})"
            for b in batches), flush=True)
    print(f"cpu seconds per unit, batch {batches[-1]} / batch {batches[0]}: "
          + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
