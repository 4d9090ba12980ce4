"""`hero-features gather`: OUT/csv/<model>_info.csv listing the videos still to extract. No
torch: the feature widths come from the model registry."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import model_list
from ..errors import UsageError
from .extract import EXIT_OK, no_videos, output_dir_error


def run(args) -> int:
    from ..manifest import FolderScanError, OutputCollisionError, find_videos, gather
    from ..models import MODEL_IDS, feature_dims
    from ..outputs import ensure_writable_dir

    models = model_list(args.model) or list(MODEL_IDS)
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
        raise UsageError(no_videos(args.video_path))
    try:
        ensure_writable_dir(args.output_dir)
    except OSError as exc:
        raise output_dir_error(args.output_dir, exc) from None
    try:
        written = gather(video_root, output_dir, models, feature_dims(models), videos=videos)
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
