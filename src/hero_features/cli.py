"""Command line: gather | extract | models | download | pack | inspect. Argument parsing, the
dispatch to the commands (commands/, pack.py, inspect.py) and the exit statuses.

Exit status: 0 every video done, 1 some videos failed (the others finished), 2 the run could
not start (bad flags, unreadable csv, missing checkpoint), 128 + N stopped by signal N (130
Ctrl-C, 143 SIGTERM, 129 SIGHUP). Errors are the errors.HeroFeaturesError family, mapped to
statuses in one place (exit_status_of); nothing here imports torch (`--help`, `gather` and
`models` run without it).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import (DEFAULT_BATCH_SIZE, DEFAULT_DECODE_WORKERS, DEFAULT_VIDEO_TIMEOUT, PRECISIONS,
                     SCALE_ON)
from .errors import HeroFeaturesError, OutputsStopped, UsageError, VideoFailed

EXIT_OK, EXIT_FAILED_VIDEOS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["EXIT_FAILED_VIDEOS", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError",
           "build_parser", "console_main", "exit_status_of", "main"]

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
    e.add_argument("--batch_size", "--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="frames or clips per forward pass, across videos")
    e.add_argument("--num_decoding_thread", "--num-decoding-thread", type=int,
                   default=DEFAULT_DECODE_WORKERS,
                   help="decode worker processes (default %(default)s; 0 decodes in the main "
                        "process). Each worker gets cores/N FFmpeg threads (at least 1); with "
                        "0, FFmpeg picks. Models on a CPU use torch's default of one thread "
                        "per physical core (set OMP_NUM_THREADS to change it; fewer can be "
                        "faster on a machine busy with other work: docs/benchmarks.md)")
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
    e.add_argument("--video_timeout", "--video-timeout", type=float,
                   default=DEFAULT_VIDEO_TIMEOUT,
                   help="seconds the decoder of a video may go without decoding a frame "
                        "before the video is logged as failed and its decode worker killed "
                        "(with --num_decoding_thread 0: its decode thread abandoned); 0 = no "
                        "limit")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32: the reference's precision (CLIP in fp16 on CUDA, as the "
                        "reference ran it); fp16/bf16: autocast every model, faster, parity "
                        "in docs/benchmarks.md")
    e.add_argument("--scale-on", "--scale_on", dest="scale_on", choices=SCALE_ON,
                   default="cpu",
                   help="where the picked frames are scaled and converted to RGB: cpu (the "
                        "decode workers' FFmpeg graph) or device (the workers send YUV "
                        "planes and the models' device repeats libswscale's integer "
                        "arithmetic: the same bytes, less decode CPU; videos it does not "
                        "cover are scaled on the CPU, counted in the summary); default cpu "
                        "(docs/device-scale.md)")
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


# command -> (module, function); imported only when that command runs.
COMMANDS = {"extract": ("commands.extract", "run"), "gather": ("commands.gather", "run"),
            "models": ("commands.weights", "models"),
            "download": ("commands.weights", "download"), "pack": ("pack", "run_from_args"),
            "inspect": ("inspect", "run_from_args")}


def exit_status_of(exc: HeroFeaturesError) -> int:
    """The exit status of an error of the family (errors.py): 1 when videos were lost or the
    run stopped part-way with what is finished written, 2 when it could not run as asked."""
    return EXIT_FAILED_VIDEOS if isinstance(exc, (VideoFailed, OutputsStopped)) else EXIT_USAGE


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .signals import Interrupted, exit_status, stop_on_signals

    args = build_parser().parse_args(argv)
    module, function = COMMANDS[args.command]
    with stop_on_signals():  # SIGTERM and SIGHUP stop a run as Ctrl-C does
        try:
            command = getattr(importlib.import_module(f".{module}", __package__), function)
            return command(args)
        except HeroFeaturesError as exc:
            print(f"hero-features: error: {exc}", file=sys.stderr)
            return exit_status_of(exc)
        except KeyboardInterrupt as exc:
            if args.command == "extract":  # finished videos are complete files
                why = f" by {exc.args[0]}" if isinstance(exc, Interrupted) and exc.args else ""
                print(f"hero-features: interrupted{why}; rerun the same command to finish",
                      file=sys.stderr)
            else:
                print("hero-features: interrupted", file=sys.stderr)
            return exit_status(exc)


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
