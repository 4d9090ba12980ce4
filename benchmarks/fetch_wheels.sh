#!/usr/bin/env bash
# Download the wheels gpu.sh installs offline (PyAV carries its own FFmpeg) for the GPU
# host's Python version, e.g.: bash benchmarks/fetch_wheels.sh 3.11
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${1:-3.11}"
python3 -m pip download --only-binary=:all: --python-version "$version" \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d "$here/wheels" av tqdm
