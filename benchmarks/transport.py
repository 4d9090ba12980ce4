#!/usr/bin/env python3
"""Hand-over of decoded units from decode workers to the main process: shared memory (the
default) vs the same messages pickled through the pipe, measured in one run.

No decoding happens: each worker sends one ready-made array over and over, so only the
transport is timed. The consumer copies every array into a batch buffer, as `Extractor`
does. Printed per transport: wall time, MB/s, and the main process's CPU seconds per GB
(the main process is the one that must also keep the GPU fed).

    python benchmarks/transport.py [--workers 2] [--messages 400] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hero_features.config import DecodeSettings, InputGroup  # noqa: E402
from hero_features.messages import End, Info, Units  # noqa: E402
from hero_features.workers import DecodePool  # noqa: E402

SHAPES = {
    "clip": (1, 32, 224, 224, 3),  # one SlowFast / S3D clip, 4.6 MiB
    "frames": (16, 224, 398, 3),  # one chunk of 16:9 resnet frames, 4.1 MiB
}


def synthetic_units(video_id, path, groups, settings, active):
    """`path` is "<unit>:<messages>": that many copies of one array."""
    unit, count = path.split(":")
    units = np.random.default_rng(0).integers(0, 255, SHAPES[unit], dtype=np.uint8)
    yield Info(video_id, None)
    for _ in range(int(count)):
        yield Units(video_id, 0, units)
    yield End(video_id, 1.0)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(unit: str, shared: bool, workers: int, messages: int) -> tuple[float, float, int]:
    """(wall seconds, main-process CPU seconds, bytes) for `workers` videos of `messages`."""
    pool = DecodePool(workers, (InputGroup(("m",), "clip", 224, True),),
                      DecodeSettings(clip_len=Fraction(2)), decode_fn=synthetic_units,
                      shared_memory=shared)
    if shared and not pool.arenas:
        raise SystemExit(f"shared memory unavailable: {pool.transport_note}")
    batch = np.empty(SHAPES[unit], np.uint8)
    jobs = [(i, f"{unit}:{messages}", (0,)) for i in range(workers)]
    time.sleep(1.0)  # let the spawned workers finish importing before the clock starts
    moved = 0
    started, cpu = time.perf_counter(), cpu_seconds()
    for message in pool.messages(jobs):
        if isinstance(message, Units):
            np.copyto(batch, message.units)
            moved += message.units.nbytes
    return time.perf_counter() - started, cpu_seconds() - cpu, moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--messages", type=int, default=400, help="arrays per worker")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPUs, {args.workers} workers x {args.messages} arrays, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for unit in SHAPES:
        best = {}
        for _ in range(args.repeats):  # interleaved, so load drifts hit both alike
            for shared in (True, False):
                wall, cpu, moved = measure(unit, shared, args.workers, args.messages)
                if shared not in best or wall < best[shared][0]:
                    best[shared] = (wall, cpu, moved)
        for shared, (wall, cpu, moved) in best.items():
            gb = moved / 1e9
            print(f"{unit:<7} {'shared memory' if shared else 'pickled pipe':<14} "
                  f"{wall:6.2f} s  {gb / wall * 1000:7.0f} MB/s  "
                  f"main CPU {cpu / gb:5.2f} s/GB")
        print(f"{unit:<7} speed-up of shared memory: {best[False][0] / best[True][0]:.2f}x wall, "
              f"{best[False][1] / max(best[True][1], 1e-9):.2f}x less main-process CPU")


if __name__ == "__main__":
    main()
