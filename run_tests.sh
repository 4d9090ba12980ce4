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
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[dev,ray]'
exec .venv/bin/python -m pytest "$@"
