"""The GPU benchmark script stays runnable: its --smoke mode on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke_runs_on_cpu(synthetic_checkpoints):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke",
                           "--weights_dir", str(synthetic_checkpoints)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decode ceiling" in done.stdout and "ratio end-to-end / ceiling" in done.stdout
