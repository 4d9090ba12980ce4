"""The reference's eight command lines, translated onto the package.

The scripts ``slowfast/extract_feature/{gather_video_paths,extract}.py``,
``resnets/{gather_video_paths,extract}.py``, ``mil-nce/...`` and ``clip/...`` keep the
reference's flags and defaults, so its README commands run unchanged; each is a few lines
calling :func:`gather_main` or :func:`extract_main` here.

Translation rules (the reference's scripts, flag by flag):

- gather: the reference's ``--video_path /video/``, ``--feature_path /output/<m>_features``,
  ``--csv_folder /output/csv`` and ``--corrupted_id_file``. Videos are found and listed as
  the package's gather does them (recursive, sorted, sub-folders mirrored under
  ``--feature_path``, collisions refused, csv quoted), written to
  ``<csv_folder>/<m>_info.csv``. A video whose output is already complete is left out unless
  its id (file name without extension, or its path below ``--video_path`` without extension)
  is in the corrupted-id list; it is then listed once, not twice, and, as in the reference,
  it is only redone by an extract run with ``--overwrite``. Paths are written absolute; a
  folder without videos exits 2; the feature folder is left for extract to create.
- extract: ``hero-features extract --model M --csv F`` with the matching flags. Its
  ``--output_dir`` (where ``failed.jsonl`` goes) is the folder above the csv's folder when
  that folder is called ``csv`` (``/output/csv/x.csv`` -> ``/output``, the gather layout),
  else the csv's own folder.
- A checkpoint path named on the command line that does not exist but has the model's own
  file name (the README's ``/models/SLOWFAST_8x8_R50.pkl`` outside the Docker image) falls
  back to the usual look-up: --weights_dir is not a reference flag, so $HERO_FEATURES_WEIGHTS,
  /models, the cache, then a download. Any other missing path is an error.
- Values the package cannot honour exit with status 2 and say why: ``--pix_fmt yuv420p``,
  ``--type 3d``, ``--l2_normalize 0``, ``--half_precision 0`` for resnets/clip (their float32
  outputs), a ``--cfg`` other than SlowFast 8x8 R50, a CLIP ``--model_version`` other than
  ViT-B/32 and RN50x4. slowfast and mil-nce ignored ``--half_precision`` (always float16), so
  any value is accepted there with a note.
- CLIP RN50x4 writes where the reference did: every ``clip-vit_features`` in a csv path
  becomes ``clip-rn50x4_features``. A row without that folder name is refused (the reference
  would have overwritten the ViT features with RN50x4 ones).
- Behaviour differences that only fix reference bugs (docs/fidelity.md section 5): clip's
  ``--overwrite`` works; ``--dataflow`` with ``--num_decoding_thread 0`` decodes in the main
  process instead of failing an assert; a ``--clip_len`` of ``1.5`` is accepted everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

# reference folder -> (model id of its csv, script path shown in usage lines)
PIPELINES = {
    "slowfast": ("slowfast", "extract_feature/"),
    "mil-nce": ("mil-nce", ""),
    "resnets": ("resnet", ""),
    "clip": ("clip-vit", ""),
}
SLOWFAST_CFGS = ("extract_SLOWFAST_8x8_R50.yaml", "SLOWFAST_8x8_R50.yaml")
CLIP_VERSIONS = {"ViT-B/32": "clip-vit", "RN50x4": "clip-rn50x4"}
VIT_FOLDER, RN50X4_FOLDER = "clip-vit_features", "clip-rn50x4_features"
EXIT_USAGE = 2


def _prog(pipeline: str, script: str) -> str:
    return f"{pipeline}/{PIPELINES[pipeline][1]}{script}"


# --- gather ---------------------------------------------------------------------------------

def gather_main(pipeline: str, argv: Optional[Sequence[str]] = None) -> int:
    from .manifest import (FolderScanError, OutputCollisionError, find_videos, is_complete,
                           plan_outputs, write_csv)
    from .models import get_spec

    model = PIPELINES[pipeline][0]
    parser = argparse.ArgumentParser(prog=_prog(pipeline, "gather_video_paths.py"),
                                     description=f"list videos for {model} extraction")
    parser.add_argument("--video_path", default="/video/", type=str,
                        help="folder searched recursively for videos")
    parser.add_argument("--feature_path", default=f"/output/{model}_features", type=str,
                        help="output feature folder; sub-folders of --video_path are mirrored")
    parser.add_argument("--csv_folder", default="/output/csv", type=str,
                        help=f"where {model}_info.csv is written")
    parser.add_argument("--corrupted_id_file", default="", type=str,
                        help="JSON list of video ids to list again although their output exists")
    args = parser.parse_args(argv)

    # Absolute paths, as the reference's csvs had (its defaults were): the extract step may run
    # from another folder.
    root = Path(os.path.abspath(args.video_path))
    features = Path(os.path.abspath(args.feature_path))
    if not root.is_dir():
        parser.error(f"--video_path {args.video_path} is not a folder")
    corrupted = _corrupted_ids(parser, args.corrupted_id_file)
    try:
        videos = find_videos(root)
        planned = plan_outputs(videos, root, features)
    except (FolderScanError, OutputCollisionError) as exc:
        parser.error(str(exc))
    if not videos:
        parser.error(f"no videos found under {args.video_path} (searched every sub-folder)")
    rows = []
    for row in planned:
        relative = row.feature_path.relative_to(features).with_suffix("")
        done = all(is_complete(path, get_spec(m).dim)
                   for m, path in _outputs(model, row.feature_path))
        if corrupted & {relative.name, relative.as_posix()} or not done:
            rows.append(row)
    # The feature folder is left to the extract step: the one clip csv serves ViT-B/32 and
    # RN50x4, and a run for RN50x4 only must not leave an empty clip-vit_features/ behind.
    csv_file = Path(args.csv_folder) / f"{model}_info.csv"
    write_csv(rows, csv_file)
    print(f"{len(rows)} of {len(planned)} videos listed in {csv_file}")
    return 0


def _corrupted_ids(parser: argparse.ArgumentParser, path: str) -> set[str]:
    if not path:
        return set()
    try:
        with open(path, encoding="utf-8") as f:
            ids = json.load(f)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read --corrupted_id_file {path}: {exc}")
    if not isinstance(ids, list):
        parser.error(f"--corrupted_id_file {path} must hold a JSON list of video ids")
    return {str(i) for i in ids}


def _outputs(model: str, output: Path) -> list[tuple[str, Path]]:
    # One clip csv serves both CLIP models, so a row is done only when both outputs are.
    rn50x4 = _rn50x4_path(output) if model == "clip-vit" else None
    return [(model, output)] + ([("clip-rn50x4", rn50x4)] if rn50x4 is not None else [])


def _rn50x4_path(vit_path: Path) -> Optional[Path]:
    """Where the reference wrote RN50x4 features: the ViT path with its clip-vit_features
    folder renamed (None when it has none)."""
    from .manifest import sibling_feature_path

    return sibling_feature_path(vit_path, "clip-rn50x4", among=("clip-vit",))


# --- extract --------------------------------------------------------------------------------

def _extract_parser(pipeline: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_prog(pipeline, "extract.py"),
                                description="the reference's extractor flags, run by "
                                            "hero-features extract")
    clip_models = pipeline in ("slowfast", "mil-nce")
    p.add_argument("--csv", type=str, required=pipeline in ("resnets", "clip"),
                   default="extract_feature/tmp.csv" if clip_models else None,
                   help="csv with header video_path,feature_path")
    p.add_argument("--batch_size", type=int, default=4 if clip_models else 64)
    p.add_argument("--half_precision", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--num_decoding_thread", type=int, default=0 if clip_models else 4,
                   help="decode worker processes (0 decodes in the main process)")
    p.add_argument("--clip_len", type=str, default="3/2" if clip_models else "1.5",
                   help="seconds per feature row")
    if clip_models:
        p.add_argument("--dataflow", action="store_true", help="accepted; has no effect")
        p.add_argument("--target_framerate", type=int, default=30)
        p.add_argument("--pix_fmt", type=str, default="rgb24", help="only rgb24")
    if pipeline == "slowfast":
        p.add_argument("--cfg", dest="cfg_file", type=str,
                       default="configs/Kinetics/c2/extract_SLOWFAST_8x8_R50.yaml",
                       help="only the SlowFast 8x8 R50 config is supported")
        p.add_argument("--min_num_features", type=int, default=1)
        p.add_argument("opts", nargs=argparse.REMAINDER,
                       help="TEST.CHECKPOINT_FILE_PATH <path> (other keys are ignored)")
    if pipeline == "mil-nce":
        p.add_argument("--s3d_ckpt", type=str, default="/models/s3d_howto100m.pth")
    if pipeline == "resnets":
        p.add_argument("--type", type=str, default="2d", help="only 2d")
        p.add_argument("--l2_normalize", type=int, default=1, help="only 1")
        p.add_argument("--resnext101_model_path", type=str,
                       default="./3d_resnets/model/resnext101.pth", help="unused (3d only)")
    if pipeline == "clip":
        p.add_argument("--model_version", type=str, default="ViT-B/32",
                       help=" or ".join(CLIP_VERSIONS))
    return p


def _unsupported(args, pipeline: str) -> list[str]:
    problems = []
    if getattr(args, "pix_fmt", "rgb24") != "rgb24":
        problems.append(f"--pix_fmt {args.pix_fmt} is not supported: only rgb24 (the "
                        f"reference's default and the path its released features used)")
    if pipeline in ("resnets", "clip") and args.half_precision != 1:
        problems.append(f"--half_precision {args.half_precision} is not supported: outputs "
                        f"are always float16")
    if getattr(args, "type", "2d") != "2d":
        problems.append(f"--type {args.type} is not supported: only 2d (the reference "
                        f"asserted this too)")
    if getattr(args, "l2_normalize", 1) != 1:
        problems.append(f"--l2_normalize {args.l2_normalize} is not supported: ResNet "
                        f"features are always L2-normalised")
    if pipeline == "slowfast" and Path(args.cfg_file).name not in SLOWFAST_CFGS:
        problems.append(f"--cfg {args.cfg_file} is not supported: only the SlowFast 8x8 R50 "
                        f"config ({SLOWFAST_CFGS[0]})")
    if pipeline == "clip" and args.model_version not in CLIP_VERSIONS:
        problems.append(f"--model_version {args.model_version} is not supported: choose "
                        f"{' or '.join(CLIP_VERSIONS)}")
    return problems


def _output_dir(csv_file: Path) -> Path:
    folder = csv_file.parent
    return folder.parent if folder.name == "csv" else folder


def _checkpoint(path: Optional[str], model: str) -> Optional[str]:
    """The named checkpoint, or None to use the package's look-up for a missing file that
    carries the model's own name (the README's /models/<file> outside the Docker image)."""
    from .models import get_spec

    if path is None or Path(path).is_file():
        return path
    if Path(path).name == get_spec(model).checkpoint.filename:
        print(f"note: {path} does not exist; looking {Path(path).name} up in "
              f"$HERO_FEATURES_WEIGHTS, /models and the cache instead", file=sys.stderr)
        return None
    return path  # hero-features reports it as missing


def slowfast_opts(opts: Sequence[str]) -> tuple[Optional[str], list[tuple[str, str]]]:
    """The SlowFast extractor's trailing `KEY VALUE` tail: (its TEST.CHECKPOINT_FILE_PATH or
    None, the other pairs, which mean nothing here). ValueError for an odd tail."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"trailing options must be KEY VALUE pairs, got {' '.join(opts)}")
    checkpoint, others = None, []
    for key, value in zip(opts[::2], opts[1::2]):
        if key == "TEST.CHECKPOINT_FILE_PATH":
            checkpoint = value
        else:
            others.append((key, value))
    return checkpoint, others


def _rn50x4_csv(csv_file: Path, folder: Path) -> Path:
    """A copy of a ViT csv with the reference's RN50x4 output paths."""
    from .manifest import ManifestError, Row, read_csv, write_csv

    try:
        rows = read_csv(csv_file)
    except (OSError, ManifestError):
        return csv_file  # hero-features reports why it cannot be read
    derived_paths = [_rn50x4_path(r.feature_path) for r in rows]
    outside = [str(r.feature_path) for r, p in zip(rows, derived_paths) if p is None]
    if outside:
        print(f"clip/extract.py: error: --model_version RN50x4 writes to the "
              f"{RN50X4_FOLDER} folder next to {VIT_FOLDER}, but these feature paths are "
              f"not under a {VIT_FOLDER} folder: {', '.join(outside[:5])}"
              f"{' ...' if len(outside) > 5 else ''}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    derived = folder / csv_file.name
    write_csv([Row(r.video_path, p) for r, p in zip(rows, derived_paths)], derived)
    return derived


def extract_script(pipeline: str) -> int:
    """The reference's extract.py run as a program: like `hero-features extract`, it first
    restarts itself under the caching allocator (allocator.py); extract_main never does."""
    from .allocator import AllocatorError, use_caching_allocator

    try:
        use_caching_allocator()
    except AllocatorError as exc:
        print(f"{_prog(pipeline, 'extract.py')}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return extract_main(pipeline)


def extract_main(pipeline: str, argv: Optional[Sequence[str]] = None) -> int:
    from .cli import main as cli_main

    parser = _extract_parser(pipeline)
    args = parser.parse_args(argv)
    problems = _unsupported(args, pipeline)
    if problems:
        parser.error("; ".join(problems))
    if pipeline in ("slowfast", "mil-nce") and args.half_precision != 1:
        print(f"note: --half_precision {args.half_precision} is ignored, as in the reference: "
              f"{pipeline} features are always float16", file=sys.stderr)

    model = CLIP_VERSIONS[args.model_version] if pipeline == "clip" else PIPELINES[pipeline][0]
    csv_file = Path(args.csv)
    argv_out = ["extract", "--model", model, "--output_dir", str(_output_dir(csv_file)),
                "--clip_len", args.clip_len, "--batch_size", str(args.batch_size),
                "--num_decoding_thread", str(args.num_decoding_thread)]
    if args.overwrite:
        argv_out.append("--overwrite")
    opts: list[str] = []
    checkpoint = None
    if pipeline in ("slowfast", "mil-nce"):
        argv_out += ["--target_framerate", str(args.target_framerate)]
        if args.dataflow:
            argv_out.append("--dataflow")
    if pipeline == "slowfast":
        argv_out += ["--min_num_features", str(args.min_num_features)]
        try:
            checkpoint, others = slowfast_opts(args.opts)
            opts = [word for pair in others for word in pair]
        except ValueError:
            opts = list(args.opts)  # hero-features reports the odd tail
    if pipeline == "mil-nce":
        checkpoint = args.s3d_ckpt
    checkpoint = _checkpoint(checkpoint, model)
    if checkpoint is not None:
        argv_out += ["--checkpoint", checkpoint]

    with tempfile.TemporaryDirectory(prefix="hero-features-legacy-") as scratch:
        if model == "clip-rn50x4" and csv_file.is_file():
            csv_file = _rn50x4_csv(csv_file, Path(scratch))
        return cli_main(argv_out + ["--csv", str(csv_file), *opts])
