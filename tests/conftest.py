"""Shared fixtures: synthetic checkpoints in every original format, sample videos, goldens."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
VIDEOS = TESTS / "data" / "videos"
GOLDEN = TESTS / "data" / "parity" / "golden"
TOOLS = TESTS / "tools"
CHECKPOINT_FILES = (
    "SLOWFAST_8x8_R50.pkl",
    "resnet152-394f9c45.pth",
    "s3d_howto100m.pth",
    "ViT-B-32.pt",
    "RN50x4.pt",
)


@pytest.fixture(scope="session")
def synthetic_checkpoints(tmp_path_factory) -> Path:
    """The deterministic synthetic weights the goldens were computed with.

    HERO_TEST_CKPTS may point at a folder that already holds them (saves ~15 s and 1 GiB of
    writes per session); otherwise they are generated once per test session.
    """
    ready = os.environ.get("HERO_TEST_CKPTS")
    if ready and all((Path(ready) / name).is_file() for name in CHECKPOINT_FILES):
        return Path(ready)
    out = tmp_path_factory.mktemp("ckpts")
    subprocess.run([sys.executable, str(TOOLS / "make_checkpoints.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="module")
def cached_models():
    """Each set of models loaded once for the in-process runs of a test module (only
    successful loads are kept, so a missing checkpoint still fails as it would)."""
    import hero_features.device_runner as device_runner

    real, cache = device_runner.load_models, {}

    def load_models(config, device):
        key = (tuple(config.models), str(config.weights_dir), str(config.checkpoint),
               str(device))
        if key not in cache:
            cache[key] = real(config, device)
        return dict(cache[key])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device_runner, "load_models", load_models)
        yield


@pytest.fixture(scope="session")
def sample_videos() -> list[Path]:
    return sorted(VIDEOS.glob("*.mp4"))


@pytest.fixture(scope="session")
def timeline_corpus(tmp_path_factory) -> dict:
    """tests/timeline_corpus.py's videos, made once per session with the ffmpeg CLI."""
    import shutil

    from timeline_corpus import build

    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg CLI (Debian's package) makes the timeline corpus")
    return build(tmp_path_factory.mktemp("timeline_corpus"))
