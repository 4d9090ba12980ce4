#!/usr/bin/env bash
# Set up .venv on first use, then extract HERO's features (SlowFast + ResNet-152) for the
# bundled sample video into ./output. Extra arguments are passed to `hero-features extract`.
# Real checkpoints download on first use; offline, point HERO_FEATURES_WEIGHTS at a folder
# that holds them (or synthetic ones: python tests/tools/make_checkpoints.py DIR).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/hero-features ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e .
fi
exec .venv/bin/hero-features extract --model slowfast --model resnet \
    --video_path samples --output_dir output "$@"
