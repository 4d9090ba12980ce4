"""Small helpers shared by the end-to-end tests."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hero_features.cli import main

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "data" / "parity" / "golden"
COMPARE = TESTS / "tools" / "compare.py"


def extract(*args, weights=None) -> int:
    # Batches have one fixed shape, padded: a batch of one costs the least on the CPU where
    # the batch size is not what a test is about (one that needs another passes --batch_size,
    # which comes later and wins).
    argv = ["extract", "--device", "cpu", "--no_progress", "--batch_size", "1",
            *map(str, args)]
    if weights is not None:
        argv += ["--weights_dir", str(weights)]
    return main(argv)


def compare(golden_folder: str, candidate: Path) -> dict:
    """Run tests/tools/compare.py (the reference study's comparison tool) with its defaults."""
    report = candidate.parent / f"{candidate.name}.compare.json"
    done = subprocess.run([sys.executable, str(COMPARE), str(GOLDEN / golden_folder),
                           str(candidate), "--json", str(report)], capture_output=True, text=True)
    result = json.loads(report.read_text())
    result["returncode"], result["stdout"] = done.returncode, done.stdout
    return result


# compare.py's defaults cannot see the 2020-environment details (bilinear scaling, slow-pathway
# index 30): those change rel_err by 0.002-0.023, float16 noise is 0.0006 (parity README).
MAX_REL_ERR = 1e-3


def assert_parity(golden_folder: str, candidate: Path) -> None:
    report = compare(golden_folder, candidate)
    assert report["returncode"] == 0 and report["pass_"], report["stdout"]
    for name, result in report["files"].items():
        assert result["ok"], (name, result["problems"])
        rel_err = result["keys"]["features"]["rel_err"]
        assert rel_err <= MAX_REL_ERR, f"{golden_folder}/{name}: rel_err {rel_err}"


def assert_parity_of(golden_folder: str, files: dict) -> None:
    """assert_parity for some videos of a golden folder: `files` maps a golden file stem
    (e.g. "carphone_pristine") to a candidate .npz anywhere. compare.py runs on a candidate
    folder where the other videos are the golden files themselves, so that its centring mean
    is still over every golden row; only the given files are judged."""
    golden = GOLDEN / golden_folder
    unknown = set(files) - {p.stem for p in golden.glob("*.npz")}
    assert not unknown, f"no golden file for {sorted(unknown)} in {golden_folder}"
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / golden_folder
        candidate.mkdir()
        for path in golden.glob("*.npz"):
            (candidate / path.name).symlink_to(Path(files.get(path.stem, path)).resolve())
        report = compare(golden_folder, candidate)
    for stem in files:
        result = report["files"][f"{stem}.npz"]
        assert result["ok"], (golden_folder, stem, result["problems"], report["stdout"])
        rel_err = result["keys"]["features"]["rel_err"]
        assert rel_err <= MAX_REL_ERR, f"{golden_folder}/{stem}: rel_err {rel_err}"


def rel_err(candidate: np.ndarray, reference: np.ndarray) -> float:
    """compare.py's relative L2 error."""
    reference = reference.astype(np.float64)
    return float(np.linalg.norm(candidate.astype(np.float64) - reference)
                 / np.linalg.norm(reference))


def failures(output_dir: Path) -> list[dict]:
    log = Path(output_dir) / "failed.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def load(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        assert list(data.keys()) == ["features"]
        return data["features"]


def make_audio_only(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440",
                    "-t", "1", "-c:a", "aac", str(path)], check=True)
    return path


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None
