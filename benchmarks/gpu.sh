#!/usr/bin/env bash
# GPU throughput check for a host that has torch (and CUDA) but maybe not PyAV, tqdm or this
# package: installs them from wheels put in benchmarks/wheels/ (no network; fetch them on a
# connected machine with benchmarks/fetch_wheels.sh), then runs gpu_bench.py.
#   bash benchmarks/gpu.sh [--smoke] [gpu_bench.py options]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
if ! "$python" -c "import av, tqdm" 2>/dev/null; then
    "$python" -m pip install --quiet --no-index --find-links "$here/wheels" av tqdm
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$here/gpu_bench.py" "$@"
