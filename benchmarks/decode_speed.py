#!/usr/bin/env python3
"""Speed of the decode + sampling stage alone (no model): hero-features vs the reference design.

Ours: `hero_features.producer.decode_video_units` (PyAV, one filter graph per video, frames streamed
and cut into clips as they arrive), consumed and thrown away.

Reference design (docs/fidelity.md 3): per video *and per model*, one `ffprobe`
call and one `ffmpeg -i IN -filter_complex "[0]fps=fps=F[s0];[s0]scale=W:H[s1][;[s1]crop=S:S:X:Y[s2]]"
-f rawvideo -pix_fmt rgb24 pipe:` subprocess whose whole stdout is captured
(`Popen.communicate`, as ffmpeg-python's `run(capture_stdout=True, quiet=True)` does) and
viewed as a uint8 numpy array; for the clip models (slowfast, mil-nce) followed by the
whole-array clip formation of 2.3: pad to whole seconds, pad chunks to a multiple of the
clip length's numerator, reshape into clips, trim by duration, gather the 32 temporal
indices. The resnet/clip loaders' float32 conversion is NOT included (ours normalises on the
device later, so the comparison stops at uint8 on both sides).

The scale filter gets `flags=bilinear` on both sides: the reference environment's FFmpeg 4
scaled bilinearly by default, and ours passes the flag explicitly (Debian's FFmpeg 5.1 would
otherwise default to bicubic, which is different, slower work). `--ref-scale-flags default`
drops it.

Both sides are timed in one process, interleaved (the order alternates per repeat), and the
median of `--repeats` runs is reported, as wall time and as CPU time (user+sys of this
process and its children: decoder threads and ffmpeg subprocesses included), since CPU time
is less disturbed by other load on a shared machine.

    python benchmarks/decode_speed.py                 # 60 s 720p, slowfast group and resnet group
    python benchmarks/decode_speed.py --all-models    # five models: one pass vs five CLI decodes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_videos  # noqa: E402

from hero_features.config import DecodeSettings, InputGroup  # noqa: E402
from hero_features.producer import decode_video_units  # noqa: E402
from hero_features.sampling import temporal_indices  # noqa: E402

MODELS = ("slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4")
# (unit, size, crop) per model, as in docs/fidelity.md section 1; used when a model module
# cannot be imported (the registry is the source of truth when it can).
FALLBACK_GEOMETRY = {
    "slowfast": ("clip", 224, True),
    "mil-nce": ("clip", 224, True),
    "resnet": ("frame", 224, False),
    "clip-vit": ("frame", 224, True),
    "clip-rn50x4": ("frame", 288, True),
}


# --------------------------------------------------------------------------------------------
# Model geometry and our groups
# --------------------------------------------------------------------------------------------

def geometry(model: str) -> tuple[str, int, bool]:
    """(unit, size, crop) of a model: from its ModelSpec when importable, else the table."""
    try:
        from hero_features.models import get_spec
        spec = get_spec(model)
        return spec.unit, spec.size, spec.crop
    except Exception:  # model module not importable (yet): fall back to docs/fidelity.md
        return FALLBACK_GEOMETRY[model]


def input_groups(models) -> list[InputGroup]:
    """Our decode groups for `models` (config.input_groups' rule: same unit/size/crop)."""
    groups: dict[tuple, list[str]] = {}
    for name in models:
        groups.setdefault(geometry(name), []).append(name)
    return [InputGroup(tuple(names), *key) for key, names in groups.items()]


# --------------------------------------------------------------------------------------------
# The reference design
# --------------------------------------------------------------------------------------------

def ffprobe(path) -> dict:
    """The reference's probe (docs/fidelity.md 3.1): width, height, floor fps, duration."""
    out = subprocess.run(["ffprobe", "-show_format", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, check=True).stdout
    stream = next(s for s in json.loads(out)["streams"] if s["codec_type"] == "video")
    num, den = (int(x) for x in stream["avg_frame_rate"].split("/"))
    try:
        duration, nb_frames = float(stream["duration"]), int(stream["nb_frames"])
    except (KeyError, ValueError):
        duration, nb_frames = -1.0, -1
    return {"width": int(stream["width"]), "height": int(stream["height"]),
            "fps": math.floor(num / den), "duration": duration, "nb_frames": nb_frames}


def output_dims(width: int, height: int, size: int) -> tuple[int, int]:
    if height >= width:
        return size, int(height * size / width)
    return int(width * size / height), size


def reference_rate(unit: str, clip_len: Fraction, duration: float, target_fps: int = 30):
    """The number the reference passed as fps=F (its Python str() is what FFmpeg saw)."""
    if unit == "clip":
        return target_fps
    rate = 1 / float(clip_len)
    if 0 < duration < float(clip_len) + 0.1:  # resnet/clip short-video rule (4.2)
        rate = 2 / max(int(duration), 1)
    return rate


def reference_graph(rate, size: int, crop: bool, width: int, height: int,
                    scale_flags: Optional[str] = "bilinear") -> tuple[str, str, int, int]:
    """(filter_complex, output label, frame width, frame height) as ffmpeg-python built it."""
    out_w, out_h = output_dims(width, height, size)
    scale = f"{out_w}:{out_h}" + (f":flags={scale_flags}" if scale_flags else "")
    graph = f"[0]fps=fps={rate}[s0];[s0]scale={scale}[s1]"
    if not crop:
        return graph, "[s1]", out_w, out_h
    x, y = int((out_w - size) / 2), int((out_h - size) / 2)
    return graph + f";[s1]crop={size}:{size}:{x}:{y}[s2]", "[s2]", size, size


def reference_decode(path, unit: str, size: int, crop: bool, clip_len: Fraction,
                     info: Optional[dict] = None, scale_flags: Optional[str] = "bilinear"):
    """One model's decode in the reference design: (uint8 array (n, H, W, 3), probe info)."""
    if info is None:
        info = ffprobe(path)
    rate = reference_rate(unit, clip_len, info["duration"])
    graph, label, w, h = reference_graph(rate, size, crop, info["width"], info["height"],
                                         scale_flags)
    proc = subprocess.Popen(["ffmpeg", "-i", str(path), "-filter_complex", graph, "-map", label,
                             "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"ffmpeg failed on {path}: {err.decode(errors='replace')[-500:]}")
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3), info


def reference_clips(frames: np.ndarray, clip_len: Fraction, src_fps: int, duration: float,
                    target_fps: int = 30) -> np.ndarray:
    """docs/fidelity.md 3.5 on the whole array: (K, 32, H, W, 3) uint8.

    Copies only where the reference must (padding, the final gather); a video that needs no
    padding is reshaped in place, which if anything favours the reference.
    """
    n = len(frames)
    seconds = -(-n // target_fps)
    if seconds * target_fps != n:  # 1. pad frames to whole seconds with the last frame
        frames = np.concatenate([frames, np.repeat(frames[-1:], seconds * target_fps - n, 0)])
    chunks = frames.reshape(seconds, target_fps, *frames.shape[1:])
    unit = clip_len.numerator  # 2. pad chunks to a multiple of k (or of p for p/q)
    padded = -(-seconds // unit) * unit
    if padded != seconds:
        chunks = np.concatenate([chunks, np.repeat(chunks[-1:], padded - seconds, 0)])
    length = target_fps * clip_len.numerator // clip_len.denominator  # 3. reshape into clips
    clips = chunks.reshape(-1, length, *frames.shape[1:])
    if duration > 0:  # 4. trim by duration
        clips = clips[:math.ceil(duration / float(clip_len))]
    picks = temporal_indices(length, src_fps, target_fps)  # 6. temporal sampling
    return clips[:, picks]


def run_reference(path, models, clip_len: Fraction, scale_flags="bilinear", keep=False):
    """The reference design for `models` on one video: one probe + one decode per model."""
    outputs = {}
    units = 0
    for model in models:
        unit, size, crop = geometry(model)
        frames, info = reference_decode(path, unit, size, crop, clip_len,
                                        scale_flags=scale_flags)
        if unit == "clip":
            frames = reference_clips(frames, clip_len, info["fps"], info["duration"])
        units += len(frames)
        if keep:
            outputs[model] = frames
        del frames
    return units, outputs


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------

def run_ours(path, groups, settings: DecodeSettings, keep=False):
    """decode_video_units() for all groups in one pass; the units are dropped (or kept per group)."""
    units = 0
    kept: dict[int, list] = {}
    for message in decode_video_units(0, str(path), groups, settings):
        kind = message.kind
        if kind == "units":
            units += len(message.units) * len(groups[message.group].models)
            if keep:
                kept.setdefault(message.group, []).append(message.units)
        elif kind == "error":
            raise RuntimeError(f"decode failed: {message}")
    outputs = {}
    if keep:
        for gi, arrays in kept.items():
            for model in groups[gi].models:
                outputs[model] = np.concatenate(arrays)
    return units, outputs


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    units = fn()
    return time.perf_counter() - wall0, _cpu_seconds() - cpu0, units


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def compare_outputs(ours: dict, ref: dict) -> dict:
    """Per model: equal shapes? identical bytes? else max |difference|."""
    result = {}
    for model, ref_units in ref.items():
        mine = ours.get(model)
        if mine is None:
            result[model] = "missing in ours"
        elif mine.shape != ref_units.shape:
            result[model] = f"shape ours {mine.shape} vs reference {ref_units.shape}"
        elif np.array_equal(mine, ref_units):
            result[model] = f"identical {mine.shape}"
        else:
            diff = np.abs(mine.astype(np.int16) - ref_units.astype(np.int16))
            result[model] = (f"same shape {mine.shape}, max |diff| {int(diff.max())}, "
                             f"{100 * np.count_nonzero(diff) / diff.size:.3f}% of bytes differ")
    return result


def benchmark(path, cases, repeats: int, settings: DecodeSettings, scale_flags) -> list[dict]:
    """cases: (label, models) pairs. Interleaves ours/reference, alternating who goes first."""
    rows = []
    for label, models in cases:
        groups = input_groups(models)
        runs = {"ours": [], "reference": []}
        sides = {
            "ours": lambda: run_ours(path, groups, settings)[0],
            "reference": lambda: run_reference(path, models, settings.clip_len, scale_flags)[0],
        }
        units = {}
        for rep in range(repeats):
            order = ("ours", "reference") if rep % 2 == 0 else ("reference", "ours")
            for side in order:
                wall, cpu, n = timed(sides[side])
                runs[side].append((wall, cpu))
                units[side] = n
                print(f"  {label:<12} rep {rep + 1} {side:<9} wall {wall:7.2f} s  "
                      f"cpu {cpu:7.2f} s  units {n}  load {loadavg()}", flush=True)
        row = {"case": label, "models": list(models),
               "groups": [list(g.models) for g in groups], "units": units}
        for side in runs:
            row[side] = {"wall": statistics.median(w for w, _ in runs[side]),
                         "cpu": statistics.median(c for _, c in runs[side]),
                         "runs": runs[side]}
        row["wall_ratio"] = row["reference"]["wall"] / row["ours"]["wall"]
        row["cpu_ratio"] = row["reference"]["cpu"] / row["ours"]["cpu"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="video length (default 60)")
    ap.add_argument("--video", type=Path, help="use this video instead of a generated one")
    ap.add_argument("--video-dir", type=Path, help="cache folder of make_videos.py")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clip-len", default="2")
    ap.add_argument("--threads", type=int, default=0,
                    help="our FFmpeg decoder threads (DecodeSettings.threads; 0 = FFmpeg's choice)")
    ap.add_argument("--all-models", action="store_true",
                    help="five models: ours in one pass vs five reference decodes")
    ap.add_argument("--ref-scale-flags", default="bilinear",
                    help="scale flags of the reference command; 'default' for none")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the untimed pass that compares our arrays with the reference's")
    ap.add_argument("--profile", action="store_true",
                    help="also run ours once under cProfile and print the top functions")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    path = args.video or make_videos.make_video(args.seconds, args.video_dir)
    clip_len = Fraction(args.clip_len)
    settings = DecodeSettings(clip_len=clip_len, threads=args.threads)
    scale_flags = None if args.ref_scale_flags == "default" else args.ref_scale_flags
    if args.all_models:
        cases = [("all-models", MODELS)]
    else:
        cases = [("slowfast", ("slowfast",)), ("resnet", ("resnet",))]

    print(f"video {path} ({path.stat().st_size / 1e6:.0f} MB), clip_len {clip_len}, "
          f"our decoder threads {args.threads or 'auto'}, nproc {os.cpu_count()}, "
          f"load {loadavg()}", flush=True)
    start_load = loadavg()
    rows = benchmark(path, cases, args.repeats, settings, scale_flags)
    end_load = loadavg()

    checks = {}
    if not args.no_check:
        for label, models in cases:
            _, ours = run_ours(path, input_groups(models), settings, keep=True)
            _, ref = run_reference(path, models, clip_len, scale_flags, keep=True)
            checks[label] = compare_outputs(ours, ref)
            del ours, ref

    print()
    print(f"median of {args.repeats} interleaved runs; ratio = reference / ours "
          f"(> 1: ours is faster); load {start_load} -> {end_load}")
    print(f"{'case':<12} {'units':>8} {'ours wall':>10} {'ref wall':>10} {'ratio':>6} "
          f"{'ours cpu':>10} {'ref cpu':>10} {'ratio':>6}")
    for row in rows:
        print(f"{row['case']:<12} {row['units']['ours']:>8} "
              f"{row['ours']['wall']:>9.2f}s {row['reference']['wall']:>9.2f}s "
              f"{row['wall_ratio']:>6.2f} {row['ours']['cpu']:>9.2f}s "
              f"{row['reference']['cpu']:>9.2f}s {row['cpu_ratio']:>6.2f}")
        if row["units"]["ours"] != row["units"]["reference"]:
            print(f"  NOTE: unit counts differ: {row['units']}")
    for label, per_model in checks.items():
        for model, verdict in per_model.items():
            print(f"check {label}/{model}: {verdict}")

    if args.profile:
        import cProfile
        import pstats
        groups = input_groups(cases[0][1])
        profiler = cProfile.Profile()
        profiler.enable()
        run_ours(path, groups, settings)
        profiler.disable()
        print(f"\ncProfile of ours ({cases[0][0]}), top 20 by total time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)

    if args.json:
        args.json.write_text(json.dumps({"video": str(path), "load": [start_load, end_load],
                                         "rows": rows, "checks": checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
