"""The GPU benchmark script stays runnable: its --smoke mode on the CPU."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke_runs_on_cpu(synthetic_checkpoints):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke",
                           "--weights_dir", str(synthetic_checkpoints)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decode ceiling" in done.stdout and "ratio end-to-end / ceiling" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    # Both --scale-on settings ran and wrote the same features.
    assert re.fullmatch(r"end-to-end speed-up \d+\.\d\d \(scale-on device / cpu\), outputs "
                        r"identical: yes", last), last


def test_every_benchmark_script_imports_and_parses_its_arguments():
    """The benchmarks are run by hand, rarely: keep each one at least importable."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) >= 8 and {ROOT / "benchmarks" / name for name in
                                  ("device_scale.py", "cpu_allocator.py")} <= set(scripts)
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


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="device_scale.py makes its videos "
                    "with the ffmpeg CLI")
def test_device_scale_benchmark_prints_its_ratio_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_scale.py"),
                             "--seconds", "1", "--repeats", "1", "--video-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"decode CPU ratio 720p \d+\.\d\d 360p \d+\.\d\d", last), last
