"""Command line: gather | extract | models | download | pack | inspect. Argument parsing and
wiring only.

Exit status: 0 every video done, 1 some videos failed (the others finished), 2 the run could
not start (bad flags, unreadable csv, missing checkpoint), 128 + N stopped by signal N (130
Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_FAILED_VIDEOS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_CLIP_LEN = 3600  # seconds per feature row; beyond an hour a row describes nothing


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
    g.add_argument("--video_path", "--video-path", required=True, type=Path,
                   help="folder searched recursively for videos")
    g.add_argument("--output_dir", "--output-dir", required=True, type=Path,
                   help="the csvs go to OUT/csv/<model>_info.csv; features later to "
                        "OUT/<model>_features")

    e = sub.add_parser("extract", help="extract features")
    _add_common(e)
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="csv with header video_path,feature_path")
    source.add_argument("--video_path", "--video-path", type=Path, help="folder of videos")
    e.add_argument("--output_dir", "--output-dir", type=Path, required=True,
                   help="features go to OUT/<model>_features/<path below --video_path>.npz; "
                        "failures to OUT/failed.jsonl")
    e.add_argument("--clip_len", "--clip-len", default="3/2",
                   help="seconds per feature row: 2, 1.5 or 3/2")
    e.add_argument("--batch_size", "--batch-size", type=int, default=32,
                   help="frames or clips per forward pass, across videos")
    e.add_argument("--num_decoding_thread", "--num-decoding-thread", type=int, default=2,
                   help="decode worker processes (0 decodes in the main process)")
    e.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: cuda if "
                                                  "torch sees one, else cpu)")
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
    e.add_argument("--weights_dir", "--weights-dir", type=Path, help=_WEIGHTS_DIR_HELP)
    e.add_argument("--checkpoint", type=Path, help="checkpoint file (one model only)")
    e.add_argument("--overwrite", action="store_true",
                   help="redo videos whose output exists (also those made with other settings, "
                        "which are otherwise refused)")
    e.add_argument("--allow_outside_output_dir", "--allow-outside-output-dir",
                   action="store_true",
                   help="let the csv's feature paths lie outside --output_dir (refused "
                        "otherwise, so a csv cannot write anywhere it likes)")
    e.add_argument("--target_framerate", "--target-framerate", type=int, default=30,
                   help="decode rate of the clip models (slowfast, mil-nce)")
    e.add_argument("--min_num_features", "--min-num-features", type=int, default=1,
                   help="slowfast: a video giving fewer clips is re-cut into this many, as "
                        "the reference did")
    e.add_argument("--pix_fmt", "--pix-fmt", default="rgb24", choices=["rgb24"],
                   help="only rgb24 (the reference's default path)")
    e.add_argument("--dataflow", action="store_true",
                   help="accepted for the reference's commands; has no effect")
    e.add_argument("--half_precision", "--half-precision", type=int, default=1, choices=[1],
                   help="accepted for the reference's commands; outputs are float16")
    e.add_argument("--video_timeout", "--video-timeout", type=float, default=300.0,
                   help="seconds the decoder of a video may go without decoding a frame "
                        "before the video is logged as failed and its decode worker killed "
                        "(with --num_decoding_thread 0: its decode thread abandoned); 0 = no "
                        "limit")
    e.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="fp32: the reference's precision (CLIP in fp16 on CUDA, as the "
                        "reference ran it); fp16/bf16: autocast every model, faster, parity "
                        "in docs/benchmarks.md")
    e.add_argument("--no_progress", "--no-progress", action="store_true",
                   help="no progress bar (the summary is still printed)")
    e.add_argument("--no_download", "--no-download", action="store_true",
                   help="never download a missing checkpoint")
    e.add_argument("opts", nargs=argparse.REMAINDER,
                   help="SlowFast's trailing TEST.CHECKPOINT_FILE_PATH <path>")

    m = sub.add_parser("models", help="list models, dims, decode specs and checkpoints "
                                      "(exit 1 if a checkpoint fails its published hash)")
    m.add_argument("--weights_dir", "--weights-dir", type=Path, help=_WEIGHTS_DIR_HELP)

    k = sub.add_parser("pack", help="HERO video db (LMDB) from slowfast_features + "
                                    "resnet_features")
    k.add_argument("--output_dir", "--output-dir", type=Path, required=True,
                   help="folder holding slowfast_features/ and resnet_features/")
    k.add_argument("--db_dir", "--db-dir", type=Path,
                   help="where the db goes (default: OUT/video_db)")
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
    d.add_argument("--weights_dir", "--weights-dir", type=Path,
                   help="install into this folder (default: ~/.cache/hero-features, or "
                        "$XDG_CACHE_HOME/hero-features)")
    d.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="no network: verify the checkpoints found in DIR (under their "
                        "original names) and install them")

    _add_inspect(sub)
    for subparser in sub.choices.values():
        subparser.formatter_class = _HelpFormatter
    return parser


_WEIGHTS_DIR_HELP = ("folder searched first for checkpoints under their original names, then "
                     "$HERO_FEATURES_WEIGHTS, /models, ~/.cache/hero-features")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, except where there is none to show
    (None, False) or the help already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _add_inspect(sub) -> None:
    i = sub.add_parser("inspect", help="what is in feature files: shape, rows, what made them "
                                       "and the time span of the video each row covers")
    i.add_argument("path", type=Path, help="an .npz feature file or an output folder")
    i.add_argument("--model", metavar="M",
                   help="the model that made the files (default: from the record of settings, "
                        "else from the <model>_features folder name)")
    i.add_argument("--clip_len", "--clip-len", default=None,
                   help="seconds per row used at extraction (default: from the record of "
                        "settings, else 3/2)")
    i.add_argument("--video", type=Path,
                   help="the video the file was made from (one .npz): probed for the exact "
                        "time spans, and decoded for --sheet")
    i.add_argument("--sheet", type=Path, metavar="PNG",
                   help="with --video and one .npz: draw a contact sheet of the frames each "
                        "row was computed from")
    i.add_argument("--max_rows", "--max-rows", type=int, default=None,
                   help="--sheet: draw only the first N rows")


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


def _jobs_from_csv(csv_file: Path, models: list[str], output_dir: Path,
                   allow_outside: bool = False):
    """The csv's jobs, checked as a whole before anything is decoded (output_guard)."""
    from .manifest import ManifestError, read_csv
    from .output_guard import Planned, check_csv_plan, npz_path, one_line
    from .pipeline import Job

    try:
        rows = read_csv(csv_file)
    except (OSError, ManifestError) as exc:
        raise UsageError(f"cannot read {csv_file}: {exc}") from None
    plan = []
    for row in rows:
        named = {model: row.feature_path if len(models) == 1 else
                 _sibling_feature_path(row.feature_path, model) for model in models}
        # .npz appended where the reference's np.savez appended it
        outputs = {model: npz_path(path) for model, path in named.items()}
        plan.append(Planned(row.line, row.video_path, outputs, named))
    problems = check_csv_plan(plan, output_dir, allow_outside)
    if problems:
        raise UsageError(f"{csv_file} cannot be used as it is (nothing was decoded): "
                         f"{one_line(problems)}")
    return [Job(row.video, dict(row.outputs)) for row in plan]


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


def _jobs_from_folder(video_root: Path, output_dir: Path, models: list[str],
                      unfollowed: Optional[list] = None):
    from .manifest import (FolderScanError, OutputCollisionError, feature_path, find_videos,
                           plan_rows)
    from .pipeline import Job

    if not video_root.is_dir():
        raise UsageError(f"--video_path {video_root} is not a folder")
    try:
        videos = find_videos(video_root, skipped=unfollowed)
    except FolderScanError as exc:
        raise UsageError(f"{exc}; nothing was decoded (a folder left out would drop its "
                         f"videos unsaid)") from None
    if not videos:
        raise UsageError(_no_videos(video_root))
    try:
        for model in models:
            plan_rows(videos, video_root, output_dir, model)  # raises on two videos -> one output
    except OutputCollisionError as exc:
        raise UsageError(str(exc)) from None
    return [Job(v, {m: feature_path(v, video_root, output_dir, m) for m in models}) for v in videos]


def _no_videos(root: Path) -> str:
    from .manifest import VIDEO_EXTENSIONS

    return (f"no videos found under {root} (searched every sub-folder for "
            f"{len(VIDEO_EXTENSIONS)} video extensions such as .mp4, .mkv, .webm, .avi; "
            f"names starting with '.' are skipped)")


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


def _check_numbers(args, clip_len: Fraction, specs) -> None:
    """Values argparse lets through but no run can use, refused before anything starts."""
    timeout = args.video_timeout
    if not math.isfinite(timeout) or timeout < 0:
        raise UsageError(f"--video_timeout must be a number of seconds >= 0 (0 = no limit), "
                         f"got {timeout:g}")
    shortest = Fraction(1, args.target_framerate)
    if not shortest <= clip_len <= MAX_CLIP_LEN:
        raise UsageError(f"--clip_len must be between 1/{args.target_framerate} s (one frame "
                         f"at the {args.target_framerate} fps decode rate) and {MAX_CLIP_LEN} "
                         f"s, got {args.clip_len}")
    # One batch's input buffer alone (each unit at least size x size x 3 bytes) must fit in
    # the machine's memory: otherwise the first batch fails in the allocator.
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    for spec in specs:
        unit = (32 if spec.unit == "clip" else 1) * spec.size * spec.size * 3
        need = args.batch_size * unit
        if need > memory:
            raise UsageError(f"--batch_size {args.batch_size} needs at least "
                             f"{need / 2**30:,.0f} GiB for one {spec.name} input batch "
                             f"({args.batch_size} x {unit / 2**20:.2f} MiB); this machine has "
                             f"{memory / 2**30:.1f} GiB of memory")


def _records(args, models: list[str], checkpoint: Optional[Path], clip_len: Fraction) -> tuple:
    """(model -> checkpoint path, model -> record of what makes its outputs).

    Before any video: every model's checkpoint is found (or fetched), all that are missing
    named in one error, and any under an official name that is not the published file is
    warned about once, loudly."""
    from .models import get_spec
    from .outputs import make_record
    from .weights import WeightsError, checkpoint_sha256, mismatch_warning, resolve_all

    ckpts = {model: get_spec(model).checkpoint for model in models}
    try:
        paths = resolve_all(ckpts, args.weights_dir, checkpoint,
                            download=not args.no_download)
    except WeightsError as exc:
        raise UsageError(str(exc)) from None
    warning = mismatch_warning({model: (path, ckpts[model]) for model, path in paths.items()
                                if path.name == ckpts[model].filename})
    if warning:
        print(f"hero-features extract: {warning}", file=sys.stderr)
    records = {}
    for model in models:
        spec = get_spec(model)
        try:
            sha256 = checkpoint_sha256(paths[model])
        except OSError as exc:
            raise UsageError(f"cannot read the checkpoint {paths[model]}: "
                             f"{exc.strerror or exc}") from None
        records[model] = make_record(model, clip_len, sha256, args.precision,
                                     clip_model=spec.unit == "clip",
                                     target_fps=args.target_framerate,
                                     min_num_features=args.min_num_features)
    return paths, records


def _still_to_do(jobs: list, records: dict, overwrite: bool, refused_ids: set, summary) -> list:
    """The jobs with outputs left to write (each job keeps only those), counting the
    skipped in `summary`. Refuses the run when a finished output was made with other
    settings (docs/reliability.md, "What made an output")."""
    from .manifest import MISSING, OTHER_SETTINGS, UNRECORDED, output_status
    from .models import get_spec

    todo, seen, unrecorded, other_settings = [], set(), 0, []
    for job in jobs:
        key = (str(job.video_path), tuple(sorted(map(str, job.outputs.values()))))
        if key in seen:  # the reference's gather could list a video twice
            summary.videos -= 1
            continue
        seen.add(key)
        if id(job.outputs) in refused_ids:
            continue  # logged as failed once the failure log can be written
        if not overwrite:
            left = {}
            for model, path in job.outputs.items():
                status, differences = output_status(path, get_spec(model).dim, records[model])
                if status == UNRECORDED:
                    unrecorded += 1
                elif status == OTHER_SETTINGS:
                    other_settings.append((path, differences))
                    left[model] = path
                elif status == MISSING:
                    left[model] = path
            job.outputs = left
        if job.outputs:
            todo.append(job)
        else:
            summary.skipped += 1
    if other_settings:
        path, differences = other_settings[0]
        raise UsageError(f"{len(other_settings)} finished output(s) were made with other "
                         f"settings, e.g. {path}: {', '.join(differences)}; they are kept. "
                         f"Rerun with --overwrite to redo them with these settings, or use "
                         f"another --output_dir")
    if unrecorded:
        print(f"note: {unrecorded} finished output(s) carry no record of the settings that "
              f"made them (written by the reference or an older hero-features); they are "
              f"kept as done (--overwrite redoes them)", file=sys.stderr)
    return todo


def _output_dir_error(folder: Path, exc: OSError) -> UsageError:
    return UsageError(f"cannot write to --output_dir {folder}: {exc.strerror or exc}")


def cmd_extract(args) -> int:
    from .distributed import (RayOptions, StartupError, parse_shard, resolve_gpus,
                              run_multi_device, run_ray, select_shard)
    from .models import get_spec
    from .output_guard import Planned, folder_plan_problems
    from .outputs import FailureLog, Summary, ensure_writable_dir
    from .pipeline import BatchMemoryError, RunConfig, run_on_device
    from .sampling import ClipSampler, parse_clip_len
    from .signals import Interrupted, exit_status
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
    _check_numbers(args, clip_len, [get_spec(m) for m in models])
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

    unfollowed: list = []
    jobs = (_jobs_from_csv(args.csv, models, args.output_dir, args.allow_outside_output_dir)
            if args.csv else _jobs_from_folder(args.video_path, args.output_dir, models,
                                               unfollowed))
    for link in unfollowed:
        print(f"note: not following the folder link {link} (its videos are not extracted; "
              f"pass its target as --video_path to extract them)", file=sys.stderr)
    if shard is not None:
        jobs = select_shard(jobs, *shard, root=None if args.csv else args.video_path)
    refused = [] if args.csv else folder_plan_problems(
        Planned(0, job.video_path, job.outputs) for job in jobs)
    refused_ids = {id(row.outputs) for row, _ in refused}
    checkpoints, records = _records(args, models, checkpoint, clip_len) if jobs else ({}, {})
    summary = Summary(videos=len(jobs), shard=args.shard or "")
    todo = _still_to_do(jobs, records, args.overwrite, refused_ids, summary)

    config = RunConfig(
        models=models, clip_len=clip_len, batch_size=args.batch_size,
        workers=args.num_decoding_thread, target_fps=args.target_framerate,
        min_num_features=args.min_num_features, weights_dir=args.weights_dir,
        checkpoint=checkpoint, download=not args.no_download,
        video_timeout=args.video_timeout or None, output_dir=args.output_dir,
        progress=not args.no_progress, precision=args.precision, checkpoints=checkpoints,
        records=records)
    try:
        ensure_writable_dir(args.output_dir)
    except OSError as exc:
        raise _output_dir_error(args.output_dir, exc) from None
    failures = FailureLog(args.output_dir)
    for row, reason in refused:
        for model in row.outputs:
            failures.record(row.video, model, "write", reason)
        summary.failed += 1
    try:
        if todo and gpus is not None:
            run_multi_device(config, gpus, todo, summary, failures)
        elif todo and args.ray is not None:
            run_ray(config, todo, summary, failures, RayOptions(address=args.ray or None))
        elif todo:
            run_on_device(config, device, todo, summary, failures)
    except (WeightsError, StartupError) as exc:
        raise UsageError(str(exc)) from None
    except BatchMemoryError as exc:
        for line in summary.lines():
            print(line, file=sys.stderr)
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt as exc:
        # Finished videos are complete files; the rest are redone by a rerun.
        for line in summary.lines():
            print(line, file=sys.stderr)
        why = f" by {exc.args[0]}" if isinstance(exc, Interrupted) and exc.args else ""
        print(f"hero-features: interrupted{why}; rerun the same command to finish",
              file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:  # output disk full / read-only / quota: nothing more can land
        for line in summary.lines():
            print(line, file=sys.stderr)
        print(f"hero-features: error: stopped, features cannot be written: {exc}; finished "
              f"outputs are complete, rerun the same command once there is room",
              file=sys.stderr)
        return EXIT_FAILED_VIDEOS
    for line in summary.lines():
        print(line, file=sys.stderr)
    if unfollowed:
        print(f"  {len(unfollowed)} folder link(s) not followed, their videos not extracted: "
              f"{', '.join(map(str, unfollowed[:5]))}{' ...' if len(unfollowed) > 5 else ''}",
              file=sys.stderr)
    if summary.failed:
        print(f"failures are listed in {failures.path}", file=sys.stderr)
        return EXIT_FAILED_VIDEOS
    return EXIT_OK


def cmd_gather(args) -> int:
    from .manifest import FolderScanError, OutputCollisionError, find_videos, gather
    from .models import MODEL_IDS, get_spec
    from .outputs import ensure_writable_dir

    models = _model_list(args.model) or list(MODEL_IDS)
    if not args.video_path.is_dir():
        raise UsageError(f"--video_path {args.video_path} is not a folder")
    # Absolute paths, as the reference's csvs had: `extract --csv` may run from anywhere.
    video_root = Path(os.path.abspath(args.video_path))
    output_dir = Path(os.path.abspath(args.output_dir))
    unfollowed: list = []
    try:
        videos = find_videos(video_root, skipped=unfollowed)
    except FolderScanError as exc:
        raise UsageError(str(exc)) from None
    if not videos:
        raise UsageError(_no_videos(args.video_path))
    try:
        ensure_writable_dir(args.output_dir)
    except OSError as exc:
        raise _output_dir_error(args.output_dir, exc) from None
    try:
        written = gather(video_root, output_dir, models,
                         {m: get_spec(m).dim for m in models}, videos=videos)
    except (OutputCollisionError, FolderScanError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # the csv folder, not the output folder, cannot be written
        raise UsageError(f"cannot write the csv under --output_dir {args.output_dir}: "
                         f"{exc.strerror or exc}") from None
    for model, path in written.items():
        print(f"{model}: {path}")
    for link in unfollowed:
        print(f"note: not following the folder link {link} (its videos are not listed; "
              f"pass its target as --video_path to list them)", file=sys.stderr)
    return EXIT_OK


def cmd_models(args) -> int:
    from .models import MODEL_IDS, get_spec
    from .weights import find_checkpoint, verify_cached

    rows, mismatched = [], []
    for name in MODEL_IDS:
        spec = get_spec(name)
        rate = "30 fps" if spec.unit == "clip" else "1/clip_len fps"
        decode = f"{rate}, short side {spec.size}{', crop' if spec.crop else ''}"
        path = find_checkpoint(spec.checkpoint, args.weights_dir)
        if path is None:
            state = "missing"
        else:
            ok = verify_cached(path, spec.checkpoint)
            state = {True: "verified", False: "HASH MISMATCH",
                     None: "present (no published hash)"}[ok] + f" {path}"
            if ok is False:
                mismatched.append(path)
        rows.append((name, str(spec.dim), spec.unit, decode,
                     f"{spec.checkpoint.filename}: {state}"))
    print(_table(("model", "dim", "unit", "decode", "checkpoint"), rows, right={1}))
    if mismatched:
        print(f"hero-features models: {len(mismatched)} checkpoint(s) under an official name "
              f"are not the published files (HASH MISMATCH), so their features will not match "
              f"the released ones: {', '.join(map(str, mismatched))}. Delete them and run "
              f"`hero-features download` (or `hero-features download --from DIR` with the "
              f"published files) to replace them.", file=sys.stderr)
        return EXIT_FAILED_VIDEOS
    return EXIT_OK


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right=frozenset()) -> str:
    """Columns as wide as their widest cell (the last one left ragged)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells):
        parts = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts + [cells[-1]])

    return "\n".join(line(cells) for cells in [header, *rows])


def cmd_download(args) -> int:
    from .models import MODEL_IDS, get_spec
    from .weights import WeightsError, mismatch_warning, resolve_checkpoint

    names = _model_list(args.model) or list(MODEL_IDS)
    if args.from_dir is not None:
        return _install_from(args.from_dir, names, args.weights_dir)
    status = EXIT_OK
    found = {}
    for name in names:
        ckpt = get_spec(name).checkpoint
        try:
            found[name] = (resolve_checkpoint(ckpt, args.weights_dir), ckpt)
            print(f"{name}: {found[name][0]}")
        except WeightsError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = EXIT_FAILED_VIDEOS
    warning = mismatch_warning(found)
    if warning:
        print(f"hero-features download: {warning}", file=sys.stderr)
    return status


def _install_from(folder: Path, names: Sequence[str], weights_dir: Optional[Path]) -> int:
    from .models import get_spec
    from .weights import WeightsError, cache_dir, install_checkpoint

    if not folder.is_dir():
        raise UsageError(f"--from {folder} is not a folder")
    target = Path(weights_dir) if weights_dir else cache_dir()
    status = EXIT_OK
    for name in names:
        try:
            print(f"{name}: {install_checkpoint(get_spec(name).checkpoint, folder, target)}")
        except WeightsError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = EXIT_FAILED_VIDEOS
    return status


def cmd_pack(args) -> int:
    from .pack import run_from_args

    return run_from_args(args)  # 0 all packed, 1 some videos left out, 2 could not run


def cmd_inspect(args) -> int:
    from .inspect import InspectError, run_from_args

    try:
        return run_from_args(args)
    except InspectError as exc:
        raise UsageError(str(exc)) from None


COMMANDS = {"extract": cmd_extract, "gather": cmd_gather, "models": cmd_models,
            "download": cmd_download, "pack": cmd_pack, "inspect": cmd_inspect}


def _return_freed_batches_to_the_os() -> None:
    """glibc raises its mmap threshold as large blocks are freed, after which every batch
    buffer is carved from the heap and the peak RSS creeps up over the first batches
    (docs/benchmarks.md). A fixed threshold keeps batch-sized blocks mmapped and returned."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .signals import exit_status, stop_on_signals

    args = build_parser().parse_args(argv)
    if args.command == "extract":
        _return_freed_batches_to_the_os()
    with stop_on_signals():  # SIGTERM and SIGHUP stop a run as Ctrl-C does
        try:
            return COMMANDS[args.command](args)
        except UsageError as exc:
            print(f"hero-features: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt as exc:
            print("hero-features: interrupted", file=sys.stderr)
            return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
