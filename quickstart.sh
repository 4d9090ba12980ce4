#!/usr/bin/env bash
# Set up .venv on first use, then extract HERO's features (SlowFast + ResNet-152) for the
# bundled sample video into ./output. Extra arguments are passed to `hero-features extract`.
# Real checkpoints download on first use; offline, point HERO_FEATURES_WEIGHTS at a folder
# that holds them (or synthetic ones: python tests/tools/make_checkpoints.py DIR).
#
# pip's default torch is the CUDA build: several GB to download, a ~6 GB venv. On a machine
# without an NVIDIA GPU the CPU build is enough (~1 GB); install it into the venv first and
# this script keeps it:
#   python3 -m venv .venv
#   .venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/hero-features ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -x .venv/bin/python ]; then
        echo "note: no NVIDIA GPU seen (no nvidia-smi): pip's default torch is the CUDA build" \
             "(several GB). For the CPU build instead, stop here (Ctrl-C) and run:" >&2
        echo "  python3 -m venv .venv && .venv/bin/pip install torch torchvision" \
             "--index-url https://download.pytorch.org/whl/cpu && $0" >&2
    fi
    python3 -m venv .venv
    # No --quiet: torch is a large download, and a silent pip looks frozen on a slow line.
    .venv/bin/pip install --upgrade pip
    .venv/bin/pip install -e .
fi
exec .venv/bin/hero-features extract --model slowfast --model resnet \
    --video_path samples --output_dir output "$@"
