#!/usr/bin/env bash
# Install what the tests need on a fresh machine (Debian's ffmpeg CLI for the byte-identity
# checks, a venv with the package, its dev extras and Ray) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v ffmpeg >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
    else
        echo "note: ffmpeg CLI not found; the tests that compare with it will be skipped" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        # The tests run on the CPU; pip's default torch is the CUDA build (several GB).
        echo "note: no NVIDIA GPU seen: for the much smaller CPU build of torch, stop here" \
             "(Ctrl-C) and run: python3 -m venv .venv && .venv/bin/pip install torch" \
             "torchvision --index-url https://download.pytorch.org/whl/cpu && $0" >&2
    fi
    python3 -m venv .venv
fi
# No --quiet: the first install downloads torch, and a silent pip looks frozen.
.venv/bin/pip install --upgrade pip
.venv/bin/pip install -e '.[dev,ray]'
exec .venv/bin/python -m pytest "$@"
