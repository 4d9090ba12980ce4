#!/usr/bin/env python3
"""What the fixed batch shape costs: rows computed (real + padding) per real row, per model.

Batches have one fixed shape, `--batch_size` units (batcher.py): the last, partial batch of
each model and unit shape is padded, and the padding goes through the model like real units.
This decodes the videos (no model runs), counts the units per model and unit shape, and
prints, per batch size, the rows computed for each real row for a run over all the videos
(one CLI run: videos share batches) and for the videos one at a time (hero_features.extract
per video). On a device where a row's cost does not depend on the batch, that ratio is the
compute the padding adds.

    python benchmarks/padding.py [--videos DIR] [--clip_len 3/2] [--batch_sizes 4,8,32]
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hero_features.config import DecodeSettings, input_groups  # noqa: E402
from hero_features.manifest import find_videos  # noqa: E402
from hero_features.models import MODEL_IDS, get_spec  # noqa: E402
from hero_features.producer import decode_video_units  # noqa: E402
from hero_features.sampling import parse_clip_len  # noqa: E402


def units_per_video(videos, clip_len) -> list[Counter]:
    """Per video: (model, unit shape) -> units, as the decoder hands them to the core."""
    groups = input_groups([get_spec(m) for m in MODEL_IDS])
    counts = []
    for index, path in enumerate(videos):
        seen: Counter = Counter()
        for message in decode_video_units(index, str(path), groups,
                                          DecodeSettings(clip_len=clip_len)):
            if message.kind == "units":
                for model in groups[message.group].models:
                    seen[(model, message.units.shape[1:])] += len(message.units)
            elif message.kind == "error":
                raise SystemExit(f"{path}: {message.reason}")
        counts.append(seen)
    return counts


def computed(counts: Counter, batch_size: int) -> Counter:
    """Rows computed per model: each shape's units rounded up to whole batches."""
    rows: Counter = Counter()
    for (model, _), units in counts.items():
        rows[model] += math.ceil(units / batch_size) * batch_size
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=ROOT / "tests" / "data" / "videos")
    parser.add_argument("--clip_len", default="3/2")
    parser.add_argument("--batch_sizes", default="4,8,32")
    args = parser.parse_args()
    videos = find_videos(args.videos)
    per_video = units_per_video(videos, parse_clip_len(args.clip_len))
    whole: Counter = sum(per_video, Counter())
    real: Counter = Counter()
    for (model, _), units in whole.items():
        real[model] += units
    shapes = Counter(model for model, _ in whole)
    print(f"# {len(videos)} videos in {args.videos}, clip_len {args.clip_len}; real rows: "
          + ", ".join(f"{m} {real[m]} ({shapes[m]} unit shape(s))" for m in MODEL_IDS))
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        one_run = computed(whole, batch_size)
        alone: Counter = sum((computed(c, batch_size) for c in per_video), Counter())
        for label, rows in (("one run", one_run), ("one video at a time", alone)):
            ratios = ", ".join(f"{m} {rows[m] / real[m]:.2f}" for m in MODEL_IDS)
            total = sum(rows.values()) / sum(real.values())
            print(f"batch {batch_size:3d} {label:19s}: rows computed per real row {ratios}; "
                  f"all {total:.2f}")


if __name__ == "__main__":
    main()
