"""`hero-features extract`: the jobs (a csv or a folder, a shard of them, those not done yet),
checked as a whole before anything is decoded, then one backend: the local run
(pipeline.run_on_device), --gpus (multigpu.py) or --ray (ray_backend.py)."""
from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path
from typing import Optional

from ..config import Job, RunConfig, check_run, model_list
from ..errors import BatchMemoryError, OutputsStopped, UsageError
from ..outputs import FailureLog, Summary, ensure_writable_dir

EXIT_OK, EXIT_FAILED_VIDEOS = 0, 1


def run(args) -> int:
    from ..allocator import describe as describe_allocator
    from ..legacy import slowfast_opts
    from ..output_guard import Planned, folder_plan_problems
    from ..shards import parse_shard, select_shard

    models = model_list(args.model)
    if not models:
        raise UsageError("give at least one --model")
    checkpoint = args.checkpoint
    if checkpoint is None:  # SlowFast's trailing TEST.CHECKPOINT_FILE_PATH <path>
        try:
            named, ignored = slowfast_opts(args.opts)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for key, value in ignored:
            print(f"note: ignoring config option {key} {value}", file=sys.stderr)
        checkpoint = Path(named) if named is not None else None
    if checkpoint is not None and len(models) > 1:
        raise UsageError("--checkpoint names one file; use --weights_dir with several models")
    clip_len = check_run(models, args.clip_len, batch_size=args.batch_size,
                         decode_workers=args.num_decoding_thread,
                         target_fps=args.target_framerate,
                         min_num_features=args.min_num_features,
                         video_timeout=args.video_timeout, precision=args.precision,
                         scale_on=args.scale_on)
    if args.dataflow:
        print("note: --dataflow has no effect; decoding always streams through worker "
              "processes", file=sys.stderr)
    if sum(x is not None for x in (args.device, args.gpus, args.ray)) > 1:
        raise UsageError("--device, --gpus and --ray each choose where the models run; "
                         "give one of them")
    try:
        gpus = _resolve_gpus(args.gpus) if args.gpus is not None else None
        shard = parse_shard(args.shard) if args.shard is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device = _pick_device(args.device) if gpus is None and args.ray is None else None
    if args.scale_on == "device" and device is not None and device.type == "cpu":
        print("note: --scale-on device on the CPU converts frames with torch, slower than "
              "the CPU graph (same features); it pays off on a GPU", file=sys.stderr)

    unfollowed: list = []
    jobs = (jobs_from_csv(args.csv, models, args.output_dir, args.allow_outside_output_dir)
            if args.csv else jobs_from_folder(args.video_path, args.output_dir, models,
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
    summary = Summary(videos=len(jobs), shard=args.shard or "", allocator=describe_allocator())
    todo = still_to_do(jobs, records, args.overwrite, refused_ids, summary)

    config = RunConfig(
        models=models, clip_len=clip_len, batch_size=args.batch_size,
        decode_workers=args.num_decoding_thread, target_fps=args.target_framerate,
        min_num_features=args.min_num_features, weights_dir=args.weights_dir,
        checkpoint=checkpoint, download=not args.no_download,
        video_timeout=args.video_timeout or None, output_dir=args.output_dir,
        progress=not args.no_progress, precision=args.precision, scale_on=args.scale_on,
        checkpoints=checkpoints,
        records=records)
    try:
        ensure_writable_dir(args.output_dir)
    except OSError as exc:
        raise output_dir_error(args.output_dir, exc) from None
    failures = FailureLog(args.output_dir)
    for row, reason in refused:
        for model in row.outputs:
            failures.record(row.video, model, "write", reason)
        summary.failed += 1
    try:
        if todo:
            _run_backend(args, config, gpus, device, todo, summary, failures)
    except (BatchMemoryError, KeyboardInterrupt):
        # Finished videos are complete files; the rest are redone by a rerun.
        _print(summary.lines())
        raise
    except OSError as exc:  # output disk full / read-only / quota: nothing more can land
        _print(summary.lines())
        raise OutputsStopped(f"stopped, features cannot be written: {exc}; finished outputs "
                             f"are complete, rerun the same command once there is room") \
            from None
    _print(summary.lines())
    if unfollowed:
        print(f"  {len(unfollowed)} folder link(s) not followed, their videos not extracted: "
              f"{', '.join(map(str, unfollowed[:5]))}{' ...' if len(unfollowed) > 5 else ''}",
              file=sys.stderr)
    if summary.failed:
        print(f"failures are listed in {failures.path}", file=sys.stderr)
        return EXIT_FAILED_VIDEOS
    return EXIT_OK


def _run_backend(args, config: RunConfig, gpus, device, todo: list, summary: Summary,
                 failures: FailureLog) -> None:
    if gpus is not None:
        from ..multigpu import run_multi_device

        run_multi_device(config, gpus, todo, summary, failures)
    elif args.ray is not None:
        from ..ray_backend import RayOptions, run_ray

        run_ray(config, todo, summary, failures, RayOptions(address=args.ray or None))
    else:
        from ..pipeline import run_on_device

        run_on_device(config, device, todo, summary, failures)


def _print(lines) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _resolve_gpus(text: str) -> list[str]:
    from .. import multigpu

    return multigpu.resolve_gpus(text)


def _pick_device(name: Optional[str]):
    from ..device_runner import pick_device

    return pick_device(name)


# == the jobs =====================================================================================

def jobs_from_csv(csv_file: Path, models: list[str], output_dir: Path,
                  allow_outside: bool = False) -> list[Job]:
    """The csv's jobs, checked as a whole before anything is decoded (output_guard)."""
    from ..manifest import ManifestError, read_csv, sibling_feature_path
    from ..models import MODEL_IDS
    from ..output_guard import Planned, check_csv_plan, npz_path, one_line

    try:
        rows = read_csv(csv_file)
    except (OSError, ManifestError) as exc:
        raise UsageError(f"cannot read {csv_file}: {exc}") from None
    plan = []
    for row in rows:
        named = {}
        for model in models:
            # A csv names one model's output; others go to the sibling `<model>_features`
            # folder (the reference derived RN50x4 paths from ViT ones the same way).
            path = row.feature_path if len(models) == 1 else \
                sibling_feature_path(row.feature_path, model, among=MODEL_IDS)
            if path is None:
                raise UsageError(f"with several models the csv's feature paths must lie "
                                 f"under a <model>_features folder; {row.feature_path} "
                                 f"does not")
            named[model] = path
        # .npz appended where the reference's np.savez appended it
        outputs = {model: npz_path(path) for model, path in named.items()}
        plan.append(Planned(row.line, row.video_path, outputs, named))
    problems = check_csv_plan(plan, output_dir, allow_outside)
    if problems:
        raise UsageError(f"{csv_file} cannot be used as it is (nothing was decoded): "
                         f"{one_line(problems)}")
    return [Job(row.video, dict(row.outputs)) for row in plan]


def jobs_from_folder(video_root: Path, output_dir: Path, models: list[str],
                     unfollowed: Optional[list] = None) -> list[Job]:
    from ..manifest import (FolderScanError, OutputCollisionError, feature_path, find_videos,
                            plan_rows)

    if not video_root.is_dir():
        raise UsageError(f"--video_path {video_root} is not a folder")
    try:
        videos = find_videos(video_root, skipped=unfollowed)
    except FolderScanError as exc:
        raise UsageError(f"{exc}; nothing was decoded (a folder left out would drop its "
                         f"videos unsaid)") from None
    if not videos:
        raise UsageError(no_videos(video_root))
    try:
        for model in models:
            plan_rows(videos, video_root, output_dir, model)  # raises on two videos -> one output
    except OutputCollisionError as exc:
        raise UsageError(str(exc)) from None
    return [Job(v, {m: feature_path(v, video_root, output_dir, m) for m in models}) for v in videos]


def no_videos(root: Path) -> str:
    from ..manifest import VIDEO_EXTENSIONS

    return (f"no videos found under {root} (searched every sub-folder for "
            f"{len(VIDEO_EXTENSIONS)} video extensions such as .mp4, .mkv, .webm, .avi; "
            f"names starting with '.' are skipped)")


def output_dir_error(folder: Path, exc: OSError) -> UsageError:
    return UsageError(f"cannot write to --output_dir {folder}: {exc.strerror or exc}")


# == checkpoints and records ======================================================================

def _records(args, models: list[str], checkpoint: Optional[Path], clip_len: Fraction) -> tuple:
    """(model -> checkpoint path, model -> record of what makes its outputs).

    Before any video: every model's checkpoint is found (or fetched), all that are missing
    named in one error, and any under an official name that is not the published file is
    warned about once, loudly."""
    from ..models import get_spec
    from ..outputs import make_record
    from ..weights import checkpoint_sha256, mismatch_warning, resolve_all

    ckpts = {model: get_spec(model).checkpoint for model in models}
    paths = resolve_all(ckpts, args.weights_dir, checkpoint, download=not args.no_download)
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


def still_to_do(jobs: list, records: dict, overwrite: bool, refused_ids: set,
                summary: Summary) -> list:
    """The jobs with outputs left to write (each job keeps only those), counting the
    skipped in `summary`. Refuses the run when a finished output was made with other
    settings (docs/reliability.md, "What made an output")."""
    from ..manifest import MISSING, OTHER_SETTINGS, UNRECORDED, output_status
    from ..models import get_spec

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
