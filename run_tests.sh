#!/usr/bin/env bash
# Install what the tests need on a fresh machine (Debian's ffmpeg CLI for the byte-identity
# checks, tcmalloc for the allocator tests, a venv with the package, its dev extras and Ray)
# and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=0
apt_install() {
    if [ "${apt_updated}" = 0 ]; then apt-get update -qq && apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! command -v ffmpeg >/dev/null 2>&1; then
    if can_apt; then
        apt_install ffmpeg
    else
        echo "note: ffmpeg CLI not found; the tests that compare with it will be skipped" >&2
    fi
fi
# Found the way hero_features.allocator looks for it; renamed ...t64 in Debian 13 / Ubuntu 24.04.
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then
    tcmalloc=libtcmalloc-minimal4
    if can_apt && { apt_install "${tcmalloc}t64" 2>/dev/null || apt_install "${tcmalloc}"; }; then
        :
    else
        echo "note: tcmalloc not installed; the tests that need it will be skipped" >&2
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
