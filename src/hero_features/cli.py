"""Command line: gather | extract | models | download | pack. Argument parsing and wiring only.

Exit status: 0 every video done, 1 some videos failed (the others finished), 2 the run could
not start (bad flags, unreadable csv, missing checkpoint).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_FAILED_VIDEOS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """The run cannot start as asked; reported in one line with exit status 2."""


def _model_list(values: Optional[Sequence[str]]) -> list[str]:
    from .models import MODEL_IDS

    names: list[str] = []
    for value in values or []:
        for name in value.split(","):
            name = name.strip().replace("_", "-")
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if n not in MODEL_IDS]
    if unknown:
        raise UsageError(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODEL_IDS)}")
    return names


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="M",
                   help="model id (repeat or comma-separate): slowfast, mil-nce, resnet, "
                        "clip-vit, clip-rn50x4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hero-features",
                                     description="HERO/VALUE video features, faithful to the "
                                                 "reference extractor.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gather", help="list videos and write OUT/csv/<model>_info.csv")
    _add_common(g)
    g.add_argument("--video_path", "--video-path", required=True, type=Path)
    g.add_argument("--output_dir", "--output-dir", required=True, type=Path)

    e = sub.add_parser("extract", help="extract features")
    _add_common(e)
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="csv with header video_path,feature_path")
    source.add_argument("--video_path", "--video-path", type=Path, help="folder of videos")
    e.add_argument("--output_dir", "--output-dir", type=Path, required=True)
    e.add_argument("--clip_len", "--clip-len", default="3/2",
                   help="seconds per feature row: 2, 1.5 or 3/2 (default 3/2)")
    e.add_argument("--batch_size", "--batch-size", type=int, default=32,
                   help="frames or clips per forward pass, across videos")
    e.add_argument("--num_decoding_thread", "--num-decoding-thread", type=int, default=2,
                   help="decode worker processes (default 2; 0 decodes in the main process). "
                        "Each worker gets cores/N FFmpeg threads (at least 1); with 0, "
                        "FFmpeg picks. Models on a CPU use torch's default of one thread per "
                        "physical core (set OMP_NUM_THREADS to change it; fewer can be faster "
                        "on a machine busy with other work: docs/benchmarks.md)")
    e.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: cuda if "
                                                  "available)")
    e.add_argument("--gpus", metavar="all|0,1,3",
                   help="one worker process per GPU, all taking videos from one queue, each "
                        "with its own --num_decoding_thread decode workers (docs/scaling.md)")
    e.add_argument("--shard", metavar="K/N",
                   help="only shard K (0..N-1) of N: a stable hash of each video path picks "
                        "its shard; for job arrays (docs/scaling.md)")
    e.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="decode on the CPUs and run the models on the GPUs of a Ray cluster "
                        "(default address: RAY_ADDRESS, a running local instance, or a new "
                        "one); outputs must be on shared storage (docs/scaling.md)")
    e.add_argument("--weights_dir", "--weights-dir", type=Path)
    e.add_argument("--checkpoint", type=Path, help="checkpoint file (one model only)")
    e.add_argument("--overwrite", action="store_true", help="redo videos whose output exists")
    e.add_argument("--target_framerate", "--target-framerate", type=int, default=30,
                   help="decode rate of the clip models (slowfast, mil-nce)")
    e.add_argument("--min_num_features", "--min-num-features", type=int, default=1)
    e.add_argument("--pix_fmt", "--pix-fmt", default="rgb24", choices=["rgb24"],
                   help="only rgb24 (the reference's default path)")
    e.add_argument("--dataflow", action="store_true",
                   help="accepted for the reference's commands; has no effect")
    e.add_argument("--half_precision", "--half-precision", type=int, default=1, choices=[1],
                   help="accepted for the reference's commands; outputs are float16")
    e.add_argument("--video_timeout", "--video-timeout", type=float, default=300.0,
                   help="seconds a video may go without producing a frame before its decode "
                        "worker is killed and the video logged as failed (0 = no limit; needs "
                        "--num_decoding_thread >= 1)")
    e.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="fp32: the reference's precision (CLIP in fp16 on CUDA, as the "
                        "reference ran it); fp16/bf16: autocast every model, faster, parity "
                        "in docs/benchmarks.md")
    e.add_argument("--no_progress", "--no-progress", action="store_true")
    e.add_argument("--no_download", "--no-download", action="store_true",
                   help="never download a missing checkpoint")
    e.add_argument("opts", nargs=argparse.REMAINDER,
                   help="SlowFast's trailing TEST.CHECKPOINT_FILE_PATH <path>")

    m = sub.add_parser("models", help="list models, dims, decode specs and checkpoints")
    m.add_argument("--weights_dir", "--weights-dir", type=Path)

    k = sub.add_parser("pack", help="HERO video db (LMDB) from slowfast_features + "
                                    "resnet_features")
    k.add_argument("--output_dir", "--output-dir", type=Path, required=True,
                   help="folder holding slowfast_features/ and resnet_features/")
    k.add_argument("--db_dir", "--db-dir", type=Path, help="default: OUT/video_db")
    k.add_argument("--clip_interval", "--clip-interval", type=int, default=None,
                   help="seconds; cut videos into sub-clips <vid>.<k> of "
                        "int(clip_interval/clip_len) rows, as HERO did for HowTo100M (60)")
    k.add_argument("--clip_len", "--clip-len", default="3/2",
                   help="seconds per feature row used at extraction; names the db folder")
    k.add_argument("--compress", action="store_true",
                   help="npz-compressed values (HERO's compressed_db)")
    k.add_argument("--fp16", action="store_true", help="store float16 instead of HERO's float32")

    d = sub.add_parser("download", help="fetch checkpoints (all, or --model ...)")
    _add_common(d)
    d.add_argument("--weights_dir", "--weights-dir", type=Path)
    return parser


def _slowfast_opts(opts: Sequence[str]) -> Optional[Path]:
    """The reference's `KEY VALUE` tail; only TEST.CHECKPOINT_FILE_PATH means anything here."""
    opts = list(opts)
    if len(opts) % 2:
        raise UsageError(f"trailing options must be KEY VALUE pairs, got {' '.join(opts)}")
    checkpoint = None
    for key, value in zip(opts[::2], opts[1::2]):
        if key == "TEST.CHECKPOINT_FILE_PATH":
            checkpoint = Path(value)
        else:
            print(f"note: ignoring config option {key} {value}", file=sys.stderr)
    return checkpoint


def _jobs_from_csv(csv_file: Path, models: list[str]):
    from .manifest import ManifestError, read_csv
    from .pipeline import Job

    try:
        rows = read_csv(csv_file)
    except (OSError, ManifestError) as exc:
        raise UsageError(f"cannot read {csv_file}: {exc}") from None
    jobs = []
    for row in rows:
        outputs = {}
        for model in models:
            outputs[model] = row.feature_path if len(models) == 1 else \
                _sibling_feature_path(row.feature_path, model)
        jobs.append(Job(row.video_path, outputs))
    return jobs


def _sibling_feature_path(path: Path, model: str) -> Path:
    """A csv names one model's output; others go to the sibling `<model>_features` folder
    (the reference derived RN50x4 paths from ViT ones the same way)."""
    from .models import MODEL_IDS

    parts = list(path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in {f"{m}_features" for m in MODEL_IDS}:
            parts[i] = f"{model}_features"
            return Path(*parts)
    raise UsageError(f"with several models the csv's feature paths must lie under a "
                     f"<model>_features folder; {path} does not")


def _jobs_from_folder(video_root: Path, output_dir: Path, models: list[str]):
    from .manifest import OutputCollisionError, feature_path, find_videos, plan_rows
    from .pipeline import Job

    if not video_root.is_dir():
        raise UsageError(f"--video_path {video_root} is not a folder")
    videos = find_videos(video_root)
    try:
        for model in models:
            plan_rows(videos, video_root, output_dir, model)  # raises on two videos -> one output
    except OutputCollisionError as exc:
        raise UsageError(str(exc)) from None
    return [Job(v, {m: feature_path(v, video_root, output_dir, m) for m in models}) for v in videos]


def _pick_device(name: Optional[str]):
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device")
    return device


def cmd_extract(args) -> int:
    from .allocator import describe as describe_allocator
    from .distributed import (RayOptions, StartupError, parse_shard, resolve_gpus,
                              run_multi_device, run_ray, select_shard)
    from .manifest import is_complete
    from .models import get_spec
    from .outputs import FailureLog, Summary, ensure_writable_dir
    from .pipeline import RunConfig, run_on_device
    from .sampling import ClipSampler, parse_clip_len
    from .weights import WeightsError

    models = _model_list(args.model)
    if not models:
        raise UsageError("give at least one --model")
    checkpoint = args.checkpoint or _slowfast_opts(args.opts)
    if checkpoint is not None and len(models) > 1:
        raise UsageError("--checkpoint names one file; use --weights_dir with several models")
    try:
        clip_len = parse_clip_len(args.clip_len)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.batch_size < 1 or args.num_decoding_thread < 0 or args.target_framerate < 1 \
            or args.min_num_features < 1:
        raise UsageError("--batch_size, --target_framerate and --min_num_features must be "
                         ">= 1 and --num_decoding_thread >= 0")
    if args.dataflow:
        print("note: --dataflow has no effect; decoding always streams through worker "
              "processes", file=sys.stderr)
    if sum(x is not None for x in (args.device, args.gpus, args.ray)) > 1:
        raise UsageError("--device, --gpus and --ray each choose where the models run; "
                         "give one of them")
    try:
        gpus = resolve_gpus(args.gpus) if args.gpus is not None else None
        shard = parse_shard(args.shard) if args.shard is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device = _pick_device(args.device) if gpus is None and args.ray is None else None
    specs = [get_spec(m) for m in models]
    if any(spec.unit == "clip" for spec in specs):
        try:  # the clip models' own constraints, checked before any video is touched
            ClipSampler(clip_len, 30, None, args.target_framerate, args.min_num_features)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    jobs = (_jobs_from_csv(args.csv, models) if args.csv
            else _jobs_from_folder(args.video_path, args.output_dir, models))
    if shard is not None:
        jobs = select_shard(jobs, *shard, root=None if args.csv else args.video_path)
    summary = Summary(videos=len(jobs), allocator=describe_allocator())
    todo, seen = [], set()
    for job in jobs:
        key = (str(job.video_path), tuple(sorted(map(str, job.outputs.values()))))
        if key in seen:  # the reference's gather could list a video twice
            summary.videos -= 1
            continue
        seen.add(key)
        if not args.overwrite:
            job.outputs = {m: p for m, p in job.outputs.items()
                           if not is_complete(p, get_spec(m).dim)}
        if job.outputs:
            todo.append(job)
        else:
            summary.skipped += 1

    config = RunConfig(
        models=models, clip_len=clip_len, batch_size=args.batch_size,
        workers=args.num_decoding_thread, target_fps=args.target_framerate,
        min_num_features=args.min_num_features, weights_dir=args.weights_dir,
        checkpoint=checkpoint, download=not args.no_download,
        video_timeout=args.video_timeout or None, output_dir=args.output_dir,
        progress=not args.no_progress, precision=args.precision)
    try:
        ensure_writable_dir(args.output_dir)
    except OSError as exc:
        raise UsageError(f"cannot write to --output_dir {args.output_dir}: "
                         f"{exc.strerror or exc}") from None
    failures = FailureLog(args.output_dir)
    try:
        if todo and gpus is not None:
            run_multi_device(config, gpus, todo, summary, failures)
        elif todo and args.ray is not None:
            run_ray(config, todo, summary, failures, RayOptions(address=args.ray or None))
        elif todo:
            run_on_device(config, device, todo, summary, failures)
    except (WeightsError, StartupError) as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        # Finished videos are complete files; the rest are redone by a rerun.
        for line in summary.lines():
            print(line, file=sys.stderr)
        print("hero-features: interrupted; rerun the same command to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # output disk full / read-only / quota: nothing more can land
        for line in summary.lines():
            print(line, file=sys.stderr)
        print(f"hero-features: error: stopped, features cannot be written: {exc}; finished "
              f"outputs are complete, rerun the same command once there is room",
              file=sys.stderr)
        return EXIT_FAILED_VIDEOS
    for line in summary.lines():
        print(line, file=sys.stderr)
    if summary.failed:
        print(f"failures are listed in {failures.path}", file=sys.stderr)
        return EXIT_FAILED_VIDEOS
    return EXIT_OK


def cmd_gather(args) -> int:
    from .manifest import OutputCollisionError, gather
    from .models import MODEL_IDS, get_spec

    models = _model_list(args.model) or list(MODEL_IDS)
    if not args.video_path.is_dir():
        raise UsageError(f"--video_path {args.video_path} is not a folder")
    try:
        written = gather(args.video_path, args.output_dir, models,
                         {m: get_spec(m).dim for m in models})
    except OutputCollisionError as exc:
        raise UsageError(str(exc)) from None
    for model, path in written.items():
        print(f"{model}: {path}")
    return EXIT_OK


def cmd_models(args) -> int:
    from .models import MODEL_IDS, get_spec
    from .weights import find_checkpoint, verify

    print(f"{'model':<12} {'dim':>5}  {'unit':<5} {'decode':<32} checkpoint")
    for name in MODEL_IDS:
        spec = get_spec(name)
        rate = "30 fps" if spec.unit == "clip" else "1/clip_len fps"
        decode = f"{rate}, short side {spec.size}{', crop' if spec.crop else ''}"
        path = find_checkpoint(spec.checkpoint, args.weights_dir)
        if path is None:
            state = "missing"
        else:
            ok = verify(path, spec.checkpoint)
            state = {True: "verified", False: "HASH MISMATCH", None: "present (no published hash)"}[ok]
            state += f" {path}"
        print(f"{name:<12} {spec.dim:>5}  {spec.unit:<5} {decode:<32} {spec.checkpoint.filename}: {state}")
    return EXIT_OK


def cmd_download(args) -> int:
    from .models import MODEL_IDS, get_spec
    from .weights import WeightsError, resolve_checkpoint

    status = EXIT_OK
    for name in _model_list(args.model) or list(MODEL_IDS):
        try:
            print(f"{name}: {resolve_checkpoint(get_spec(name).checkpoint, args.weights_dir)}")
        except WeightsError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = EXIT_FAILED_VIDEOS
    return status


def cmd_pack(args) -> int:
    from .pack import run_from_args

    return run_from_args(args)  # 0 all packed, 1 some videos left out, 2 could not run


COMMANDS = {"extract": cmd_extract, "gather": cmd_gather, "models": cmd_models,
            "download": cmd_download, "pack": cmd_pack}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"hero-features: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hero-features: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def console_main() -> int:
    """The `hero-features` program (console script, `python -m hero_features`). An extract
    first restarts itself under the caching allocator (allocator.py); main() never does,
    since it is also called in-process."""
    if sys.argv[1:2] == ["extract"]:
        from .allocator import AllocatorError, use_caching_allocator

        try:
            use_caching_allocator()
        except AllocatorError as exc:
            print(f"hero-features: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
