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


def test_every_benchmark_script_imports_and_parses_its_arguments():
    """The benchmarks are run by hand, rarely: keep each one at least importable."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) >= 8 and ROOT / "benchmarks" / "cpu_allocator.py" in scripts
    for script in scripts:
        result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                                text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, f"{script.name}: {result.stderr[-2000:]}"
        assert "usage" in result.stdout.lower(), script.name


def test_transport_benchmark_moves_units_both_ways():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transport.py"),
                             "--workers", "1", "--messages", "5", "--repeats", "1"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    for unit in ("clip", "frames"):
        for transport in ("shared memory", "pickled pipe"):
            assert any(line.startswith(unit) and transport in line and "MB/s" in line
                       for line in result.stdout.splitlines()), result.stdout
