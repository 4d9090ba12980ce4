#!/usr/bin/env python3
"""Five-model CPU extract under the system allocator vs ours (tcmalloc, allocator.py).

Each run is a fresh `python -m hero_features extract --model slowfast --model mil-nce --model
resnet --model clip-vit --model clip-rn50x4 --device cpu` on the same videos, the two sides
interleaved (which side goes first alternates) so that a load spike on a shared machine does
not decide the comparison. "system" runs with HERO_FEATURES_ALLOCATOR=system, "ours" with the
variable unset, as a user runs it; the allocator each run reports in its summary is checked.
Every run's features are compared with the first run's (arrays, dtype and shape).

    python benchmarks/cpu_allocator.py --weights_dir DIR [--videos DIR] [--repeats 2]

The last line is `five-model extract speed-up X.XX (system allocator / ours), outputs
identical: yes|no` (ratio of the median wall times); the line before it gives the ratio of
the CPU times (user + sys of each run and its decode workers), the steadier number when
other work shares the machine. Exit status 1 if a run failed, ours did
not run under a caching allocator, or the outputs differ.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4")
SIDES = ("system", "ours")


def extract(side: str, videos: Path, out: Path, args) -> tuple[dict, str]:
    """One run; its times ({wall, cpu, sys} seconds, minor page faults) and the allocator
    its summary names. CPU times are of the process and its decode workers."""
    cmd = [sys.executable, "-m", "hero_features", "extract", "--video_path", str(videos),
           "--output_dir", str(out), "--device", "cpu", "--weights_dir", str(args.weights_dir),
           "--no_progress", "--clip_len", args.clip_len]
    for model in MODELS:
        cmd += ["--model", model]
    cmd += args.extra
    env = dict(os.environ)
    env.pop("HERO_FEATURES_ALLOCATOR", None)
    if side == "system":
        env["HERO_FEATURES_ALLOCATOR"] = "system"
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of the run and its reaped workers
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(stderr[-3000:])
        raise SystemExit(f"{side} run failed (exit {proc.returncode})")
    allocator = next((line.split(":", 1)[1].strip() for line in stderr.splitlines()
                      if line.startswith("allocator:")), "not reported")
    times = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "sys": usage.ru_stime,
             "faults": usage.ru_minflt}
    return times, allocator


def features(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in sorted(out.rglob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            found[str(path.relative_to(out))] = data["features"]
    return found


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and
        a[k].tobytes() == b[k].tobytes() for k in a)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights_dir", "--weights-dir", type=Path,
                        default=os.environ.get("HERO_FEATURES_WEIGHTS") or None,
                        help="checkpoints of all five models (default: $HERO_FEATURES_WEIGHTS)")
    parser.add_argument("--videos", type=Path, default=ROOT / "tests" / "data" / "videos",
                        help="folder of videos (default: the sample videos, tests/data/videos)")
    parser.add_argument("--clip_len", "--clip-len", default="3/2")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side (default 2)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: more extract flags for both sides, e.g. -- "
                             "--num_decoding_thread 1")
    args = parser.parse_args(argv)
    if args.weights_dir is None:
        parser.error("give --weights_dir or set HERO_FEATURES_WEIGHTS")
    if args.extra[:1] == ["--"]:
        args.extra = args.extra[1:]
    print(f"# {os.cpu_count()} CPUs, videos {args.videos}, clip_len {args.clip_len}, "
          f"extra flags {args.extra or 'none'}, load {loadavg()}", flush=True)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    reference, same, ours_allocators = None, True, set()
    with tempfile.TemporaryDirectory(prefix="hero-alloc-") as tmp:
        for repeat in range(args.repeats):
            order = SIDES if repeat % 2 == 0 else SIDES[::-1]
            for side in order:
                out = Path(tmp) / f"{side}{repeat}"
                times, allocator = extract(side, args.videos, out, args)
                runs[side].append(times)
                if side == "ours":
                    ours_allocators.add(allocator.split(" ")[0])
                got = features(out)
                if reference is None:
                    reference = got
                elif not identical(reference, got):
                    same = False
                print(f"{side:<6} repeat {repeat + 1}: wall {times['wall']:7.1f} s, CPU "
                      f"{times['cpu']:7.1f} s (sys {times['sys']:6.1f} s), "
                      f"{times['faults'] / 1e6:5.2f} M minor faults; allocator {allocator} "
                      f"({len(got)} files, load {loadavg()})", flush=True)
    medians = {side: {key: statistics.median(r[key] for r in runs[side])
                      for key in runs[side][0]} for side in SIDES}
    for side in SIDES:
        m = medians[side]
        print(f"{side:<6} median wall {m['wall']:7.1f} s (best "
              f"{min(r['wall'] for r in runs[side]):7.1f} s), CPU {m['cpu']:7.1f} s, sys "
              f"{m['sys']:6.1f} s, {m['faults'] / 1e6:5.2f} M minor faults")
    print(f"CPU time ratio {medians['system']['cpu'] / medians['ours']['cpu']:.2f} "
          f"(system allocator / ours; steadier than wall time on a loaded machine)")
    caching = ours_allocators <= {"tcmalloc", "jemalloc", "mimalloc", "other"}
    if not caching:
        print(f"ours did not run under a caching allocator ({', '.join(ours_allocators)}): "
              f"install libtcmalloc-minimal4 or set HERO_FEATURES_ALLOCATOR")
    print(f"five-model extract speed-up "
          f"{medians['system']['wall'] / medians['ours']['wall']:.2f} "
          f"(system allocator / ours), outputs identical: {'yes' if same else 'no'}")
    return 0 if same and caching else 1


if __name__ == "__main__":
    sys.exit(main())
