#!/usr/bin/env python3
"""Peak memory of hero-features on a short and a long 720p video, vs the reference design.

For each side the measured command runs as a child process, and two peaks are taken:

* `maxrss`: GNU `/usr/bin/time -v`'s "Maximum resident set size" (the kernel's ru_maxrss,
  exact, but of ONE process: the largest one in the tree). Where /usr/bin/time is missing,
  ru_maxrss of the child from `os.wait4` (same meaning).
* `tree`: the largest SUM of VmRSS over the whole process tree (the command, its decode
  workers, the reference's ffmpeg subprocess), sampled every 50 ms from /proc. Sampling can
  miss a short spike, and pages shared between processes are counted once per process.

Sides:

* ours, `extract` mode: `hero-features extract --model M --video_path DIR --output_dir OUT
  --clip_len C --weights_dir W --device cpu --num_decoding_thread N` (default N = 0, so one
  process decodes and runs the model and `maxrss` is the whole story; `--workers N` to see
  the decode workers, then read `tree`).
* ours, `decode-only` mode: `hero_features.producer.decode_video_units` in one process, every unit
  dropped as soon as it arrives (decode + sampling, no torch, no model). This is the stage
  whose memory could grow with the video; the model side holds at most a batch.
* reference: the reference design's decode of the same graph (ffprobe, then the ffmpeg CLI
  with the whole stdout captured by `Popen.communicate` as ffmpeg-python does, viewed as a
  numpy array) and, for the clip models, the whole-array clip formation (docs/fidelity.md 3.5).
  No model runs on this side. The reference holds 2x the raw output for a moment
  (communicate's chunk list + the joined bytes), so its peak is about
  2 x frames x H x W x 3 bytes; a run whose estimate is above `--ref-max-gb` is skipped
  and only the estimate is printed.

Defaults: `--model resnet`, 1- and 10-minute videos, ours in `extract` mode (resnet runs one
frame per 2 s, so a 10-minute extract is a few minutes on 2 cores). `--model slowfast`
defaults to `decode-only` (the SlowFast model itself takes about a second per clip on a
CPU) and `--long-minutes 20` gives the 1-vs-20-minute variant.

Acceptance (the issue): our peak grows by under 50 MiB from 1 to 10 minutes (resnet) and by
under 100 MiB from 1 to 20 minutes (slowfast).

    python benchmarks/memory.py [--weights_dir /work/ckpts]
    python benchmarks/memory.py --model slowfast --long-minutes 20
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import make_videos  # noqa: E402

MiB = 1 << 20
LIMITS_MIB = {"frame": 50, "clip": 100}  # allowed growth short -> long video
PAGE = os.sysconf("SC_PAGE_SIZE")
CHECKPOINT_FORMATS = {"slowfast": "slowfast", "mil-nce": "s3d", "resnet": "resnet",
                      "clip-vit": "clip-vit", "clip-rn50x4": "clip-rn50x4"}


# --------------------------------------------------------------------------------------------
# Measuring a child process
# --------------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeSampler(threading.Thread):
    """Largest sum of RSS over a process tree, sampled every `interval` seconds."""

    def __init__(self, root: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak = 0
        self.peak_processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            stack, seen, total = [self.root], set(), 0
            while stack:
                pid = stack.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                total += _rss(pid)
                stack.extend(_children(pid))
            if total > self.peak:
                self.peak, self.peak_processes = total, len(seen)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def measure(cmd: list[str], env=None) -> dict:
    """Run `cmd`; its exit status, wall time, max single-process RSS and max tree RSS."""
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    report = None
    if gnu_time:
        fd, report = tempfile.mkstemp(prefix="hero-mem-", suffix=".txt")
        os.close(fd)
        cmd = [gnu_time, "-v", "-o", report] + cmd
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out_chunks: list[str] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    err = proc.stderr.read()
    reader.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    sampler.stop()
    maxrss = usage.ru_maxrss * 1024  # KiB on Linux
    if report:
        text = Path(report).read_text()
        os.unlink(report)
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if match:
            maxrss = int(match.group(1)) * 1024
    return {"rc": proc.returncode, "wall": wall, "maxrss": maxrss, "tree": sampler.peak,
            "tree_processes": sampler.peak_processes, "stdout": "".join(out_chunks),
            "stderr": err, "maxrss_from": "/usr/bin/time -v" if report else "wait4"}


# --------------------------------------------------------------------------------------------
# Child modes (run as `python memory.py --child ...`)
# --------------------------------------------------------------------------------------------

def child_ours_decode(video: str, unit: str, size: int, crop: bool, clip_len: str) -> None:
    from hero_features import allocator
    from hero_features.config import DecodeSettings, InputGroup
    from hero_features.producer import decode_video_units

    allocator.use_caching_allocator()  # what a decode worker of an extract runs on

    groups = [InputGroup(("bench",), unit, size, crop)]
    units = 0
    settings = DecodeSettings(clip_len=Fraction(clip_len))
    for message in decode_video_units(0, video, groups, settings):
        if message.kind == "units":
            units += len(message.units)
        elif message.kind == "error":
            raise SystemExit(f"decode failed: {message}")
        del message
    print(json.dumps({"units": units, "allocator": allocator.describe()}))


def child_reference(video: str, unit: str, size: int, crop: bool, clip_len: str) -> None:
    from decode_speed import reference_clips, reference_decode

    clip_len_f = Fraction(clip_len)
    frames, info = reference_decode(video, unit, size, crop, clip_len_f)
    if unit == "clip":
        frames = reference_clips(frames, clip_len_f, info["fps"], info["duration"])
    print(json.dumps({"units": len(frames), "shape": list(frames.shape)}))


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------

def geometry(model: str) -> tuple[str, int, bool]:
    from decode_speed import geometry as model_geometry
    return model_geometry(model)


def reference_estimate(video: Path, unit: str, size: int, crop: bool, clip_len: Fraction) -> int:
    """Bytes the reference design holds at its peak: 2 x the raw ffmpeg output."""
    from decode_speed import ffprobe, output_dims, reference_rate
    info = ffprobe(video)
    w, h = (size, size) if crop else output_dims(info["width"], info["height"], size)
    rate = reference_rate(unit, clip_len, info["duration"])
    return 2 * round(info["duration"] * rate) * w * h * 3


def ensure_weights(weights_dir, model: str, tmp: Path) -> Path:
    if weights_dir is not None:
        return Path(weights_dir)
    out = tmp / "weights"
    print(f"generating a synthetic {model} checkpoint in {out} ...", file=sys.stderr,
          flush=True)
    subprocess.run([sys.executable, str(REPO / "tests" / "tools" / "make_checkpoints.py"),
                    str(out), "--formats", CHECKPOINT_FORMATS[model]], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def hero_features_cmd() -> list[str]:
    # What the console script runs, from the package this interpreter imports (an installed
    # console script can be older than a checkout on PYTHONPATH).
    return [sys.executable, "-m", "hero_features"]


def allocator_env(choice: str) -> dict:
    env = dict(os.environ)
    env.pop("HERO_FEATURES_ALLOCATOR", None)
    if choice != "auto":
        env["HERO_FEATURES_ALLOCATOR"] = choice
    return env


def allocator_used(result: dict) -> str:
    """The allocator a run reported: the extract's summary line, the decode child's json."""
    for line in result["stderr"].splitlines():
        if line.startswith("allocator: "):
            return line.split(": ", 1)[1]
    try:
        return json.loads(result["stdout"].strip().splitlines()[-1]).get("allocator", "?")
    except (ValueError, IndexError, AttributeError):
        return "?"


def run_ours(mode: str, model: str, video: Path, args, tmp: Path, weights: Path | None) -> dict:
    unit, size, crop = geometry(model)
    if mode == "decode-only":
        result = measure([sys.executable, __file__, "--child", "ours-decode", "--video",
                          str(video), "--geometry", f"{unit}:{size}:{int(crop)}", "--clip-len",
                          args.clip_len], env=allocator_env(args.allocator))
        result["allocator"] = allocator_used(result)
        return result
    folder = tmp / f"in-{video.stem}"
    folder.mkdir(exist_ok=True)
    link = folder / video.name
    if not link.exists():
        link.symlink_to(video)
    out = tmp / f"out-{model}-{video.stem}"
    cmd = hero_features_cmd() + [
        "extract", "--model", model, "--video_path", str(folder), "--output_dir", str(out),
        "--clip_len", args.clip_len, "--weights_dir", str(weights), "--device", "cpu",
        "--num_decoding_thread", str(args.workers), "--no_progress", "--overwrite"]
    if args.batch_size:
        cmd += ["--batch_size", str(args.batch_size)]
    env = allocator_env(args.allocator)
    env.update(item.split("=", 1) for item in args.env)
    result = measure(cmd, env=env)
    result["allocator"] = allocator_used(result)
    if result["rc"] == 0:
        outputs = list(out.rglob("*.npz"))
        result["outputs"] = [str(p) for p in outputs]
        shutil.rmtree(out, ignore_errors=True)
    return result


def run_reference(model: str, video: Path, args) -> dict:
    unit, size, crop = geometry(model)
    estimate = reference_estimate(video, unit, size, crop, Fraction(args.clip_len))
    if estimate > args.ref_max_gb * 1e9:
        return {"skipped": True, "estimate": estimate}
    result = measure([sys.executable, __file__, "--child", "reference", "--video", str(video),
                      "--geometry", f"{unit}:{size}:{int(crop)}", "--clip-len", args.clip_len])
    result["estimate"] = estimate
    return result


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _mib(value) -> str:
    return f"{value / MiB:8.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=["ours-decode", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    ap.add_argument("--geometry", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="resnet",
                    help="slowfast, mil-nce, resnet, clip-vit or clip-rn50x4 (default resnet)")
    ap.add_argument("--mode", choices=["auto", "extract", "decode-only"], default="auto",
                    help="ours as a full extract or decode+sampling only; auto = extract for "
                         "frame models (resnet, clip), decode-only for clip models")
    ap.add_argument("--decode-only", action="store_true", help="same as --mode decode-only")
    ap.add_argument("--short-minutes", type=float, default=1)
    ap.add_argument("--long-minutes", type=float, default=10)
    # The CLI's default. At clip_len 2 a 1-minute video is 30 frames, less than one batch of
    # 32, so the short run's peak is that of a smaller batch and the "growth" measured is the
    # batch size, not the video length (docs/benchmarks.md, section 2).
    ap.add_argument("--clip-len", "--clip_len", default="3/2")
    ap.add_argument("--workers", type=int, default=0,
                    help="--num_decoding_thread of the extract (default 0: one process)")
    ap.add_argument("--batch-size", "--batch_size", type=int,
                    help="--batch_size of the extract (default: the CLI's)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the extract, e.g. MALLOC_MMAP_THRESHOLD_=131072")
    ap.add_argument("--allocator", default="auto",
                    help="HERO_FEATURES_ALLOCATOR for ours: auto (as users run it: tcmalloc "
                         "where installed), system, or a library path; decode-only mode "
                         "preloads it as an extract's decode workers get it")
    ap.add_argument("--weights_dir", "--weights-dir", type=Path,
                    help="checkpoint folder (default: generate a synthetic one in a temp dir)")
    ap.add_argument("--video-dir", type=Path, help="cache folder of make_videos.py")
    ap.add_argument("--ref-max-gb", type=float, default=8.0,
                    help="skip a reference run whose estimated peak is above this (GB)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    if args.child:
        unit, size, crop = args.geometry.split(":")
        fn = child_ours_decode if args.child == "ours-decode" else child_reference
        fn(args.video, unit, int(size), bool(int(crop)), args.clip_len)
        return 0

    unit = geometry(args.model)[0]
    mode = "decode-only" if args.decode_only else args.mode
    if mode == "auto":
        mode = "extract" if unit == "frame" else "decode-only"
    lengths = [round(args.short_minutes * 60), round(args.long_minutes * 60)]
    videos = [make_videos.make_video(s, args.video_dir) for s in lengths]
    limit = LIMITS_MIB[unit]
    print(f"model {args.model}, ours in {mode} mode"
          f"{f' (--num_decoding_thread {args.workers})' if mode == 'extract' else ''}"
          f"{f' --batch_size {args.batch_size}' if mode == 'extract' and args.batch_size else ''}"
          f"{f' env {args.env}' if mode == 'extract' and args.env else ''}, "
          f"clip_len {args.clip_len}, videos {', '.join(f'{s} s' for s in lengths)} 720p30, "
          f"nproc {os.cpu_count()}, load {loadavg()}", flush=True)

    results: dict[str, list] = {"ours": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="hero-mem-") as tmp_name:
        tmp = Path(tmp_name)
        weights = ensure_weights(args.weights_dir, args.model, tmp) if mode == "extract" \
            else None
        for seconds, video in zip(lengths, videos):
            ours = run_ours(mode, args.model, video, args, tmp, weights)
            if ours["rc"] != 0:
                print(ours["stderr"][-3000:], file=sys.stderr)
                raise SystemExit(f"ours failed on {video} (exit {ours['rc']})")
            results["ours"].append(ours)
            print(f"  ours      {seconds:>5} s: maxrss {_mib(ours['maxrss'])} MiB  tree "
                  f"{_mib(ours['tree'])} MiB ({ours['tree_processes']} processes)  "
                  f"wall {ours['wall']:6.1f} s  load {loadavg()}  allocator "
                  f"{ours['allocator']}", flush=True)
            if args.no_reference:
                continue
            ref = run_reference(args.model, video, args)
            results["reference"].append(ref)
            if ref.get("skipped"):
                print(f"  reference {seconds:>5} s: skipped, estimated peak "
                      f"{ref['estimate'] / 1e9:.1f} GB > --ref-max-gb {args.ref_max_gb}",
                      flush=True)
                continue
            if ref["rc"] != 0:
                print(ref["stderr"][-3000:], file=sys.stderr)
                raise SystemExit(f"reference failed on {video} (exit {ref['rc']})")
            print(f"  reference {seconds:>5} s: maxrss {_mib(ref['maxrss'])} MiB  tree "
                  f"{_mib(ref['tree'])} MiB ({ref['tree_processes']} processes)  "
                  f"wall {ref['wall']:6.1f} s  (estimate {_mib(ref['estimate'])} MiB)",
                  flush=True)

    print()
    print(f"peak memory, MiB (2^20 bytes); maxrss = largest single process "
          f"({results['ours'][0]['maxrss_from']}), tree = summed RSS of the process tree "
          f"(50 ms samples)")
    print(f"{'side':<28} {'metric':<7} {lengths[0]:>7} s {lengths[1]:>7} s {'growth':>9}")
    verdict = None
    for side, rows in results.items():
        if not rows:
            continue
        label = f"ours ({mode})" if side == "ours" else "reference design"
        for metric in ("maxrss", "tree"):
            if any(r.get("skipped") for r in rows):
                cells = [("skipped" if r.get("skipped") else _mib(r[metric])) for r in rows]
                print(f"{label:<28} {metric:<7} {cells[0]:>9} {cells[1]:>9} "
                      f"{'(est. ' + format(rows[-1]['estimate'] / MiB, '.0f') + ' MiB peak)'}")
                continue
            growth = rows[1][metric] - rows[0][metric]
            print(f"{label:<28} {metric:<7} {_mib(rows[0][metric])} {_mib(rows[1][metric])} "
                  f"{growth / MiB:+9.1f}")
            if side == "ours" and metric == "maxrss":
                verdict = growth / MiB < limit
    print(f"acceptance: growth of ours (maxrss) under {limit} MiB: "
          f"{'PASS' if verdict else 'FAIL'}; load {loadavg()}")
    if args.json:
        for rows in results.values():
            for row in rows:
                row.pop("stderr", None)
        args.json.write_text(json.dumps({"model": args.model, "mode": mode, "lengths": lengths,
                                         "results": results}, indent=2))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
