"""The torch-free front and the one exception family.

`hero-features --help`, `gather` and `models` must work where torch cannot be imported: they
run here with stub `torch`, `av` and `open_clip` packages first on the path, each raising
ImportError when imported. Errors are one family (hero_features.HeroFeaturesError) that the
command line maps to exit statuses in one place and the Python API raises with the same
words.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hero_features
from hero_features.cli import EXIT_FAILED_VIDEOS, EXIT_USAGE, exit_status_of, main
from hero_features.errors import (BatchMemoryError, HeroFeaturesError, OutputsStopped,
                                  StartupError, UsageError, VideoFailed, WeightsError)
from hero_features.inspect import InspectError
from hero_features.models import MODEL_IDS
from hero_features.pack import PackError

from conftest import VIDEOS

SRC = Path(__file__).resolve().parent.parent / "src"
BLOCKED = ("torch", "av", "open_clip")


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory) -> dict:
    """An environment whose `torch`, `av` and `open_clip` raise ImportError on import."""
    stubs = tmp_path_factory.mktemp("stubs")
    for name in BLOCKED:
        (stubs / name).mkdir()
        (stubs / name / "__init__.py").write_text(
            f"raise ImportError('{name} cannot be imported here (a test stub)')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stubs), str(SRC), env.get("PYTHONPATH", "")])
    return env


def _run(env, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hero_features", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_stubs_really_block_torch(without_torch):
    done = subprocess.run([sys.executable, "-c", "import torch"], env=without_torch,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "cannot be imported here" in done.stderr


def test_help_gather_and_models_run_without_torch(without_torch, tmp_path):
    done = _run(without_torch, "--help")
    assert done.returncode == 0, done.stderr
    assert "{gather,extract,models,pack,download,inspect}" in done.stdout
    done = _run(without_torch, "extract", "--help")
    assert done.returncode == 0 and "--batch_size" in done.stdout, done.stderr

    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(VIDEOS / "v07_400x300_25fps_2s.mp4", videos / "sub" / "a.mp4")
    done = _run(without_torch, "gather", "--video_path", videos, "--output_dir",
                tmp_path / "out", "--model", "slowfast,resnet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"slowfast: {tmp_path / 'out' / 'csv' / 'slowfast_info.csv'}",
        f"resnet: {tmp_path / 'out' / 'csv' / 'resnet_info.csv'}"]
    assert (tmp_path / "out" / "csv" / "resnet_info.csv").read_text().splitlines()[1] == \
        f"{videos / 'sub' / 'a.mp4'},{tmp_path / 'out' / 'resnet_features' / 'sub' / 'a.npz'}"

    empty = tmp_path / "no-weights"
    empty.mkdir()
    env = {**without_torch, "HERO_FEATURES_WEIGHTS": str(empty),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = _run(env, "models", "--weights_dir", empty)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["model", "dim", "unit", "decode", "checkpoint"]
    assert [row.split()[:2] for row in rows[1:]] == [
        ["slowfast", "2304"], ["mil-nce", "1024"], ["resnet", "2048"], ["clip-vit", "512"],
        ["clip-rn50x4", "640"]]


def test_the_front_imports_nothing_heavy(without_torch):
    """Config, the registry's metadata, checkpoint look-up and the package itself."""
    code = ("import sys, hero_features\n"
            "from hero_features import cli, config, errors, messages, shards, weights\n"
            "from hero_features.models import MODEL_IDS, get_spec\n"
            "specs = [get_spec(m) for m in MODEL_IDS]\n"
            "assert [s.dim for s in specs] == [2304, 1024, 2048, 512, 640]\n"
            "groups = config.input_groups(specs)\n"
            "assert [g.models for g in groups] == [('slowfast', 'mil-nce'), ('resnet',), "
            "('clip-vit',), ('clip-rn50x4',)]\n"
            "print(sorted(m for m in ('torch', 'av', 'open_clip', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=without_torch, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_api_is_there_lazily():
    code = ("import sys, hero_features\n"
            "assert 'torch' not in sys.modules\n"
            "assert callable(hero_features.extract) and hero_features.FeatureExtractor\n"
            "print(hero_features.MODEL_IDS)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(SRC), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(MODEL_IDS)
    assert hero_features.HeroFeaturesError is HeroFeaturesError


# == one exception family ==========================================================================

@pytest.mark.parametrize("error, status", [
    (UsageError("x"), EXIT_USAGE), (WeightsError("x"), EXIT_USAGE),
    (StartupError("x"), EXIT_USAGE), (BatchMemoryError("x"), EXIT_USAGE),
    (PackError("x"), EXIT_USAGE), (InspectError("x"), EXIT_USAGE),
    (OutputsStopped("x"), EXIT_FAILED_VIDEOS),
    (VideoFailed("v.mp4", "decode", "x"), EXIT_FAILED_VIDEOS)])
def test_each_error_of_the_family_has_its_exit_status(error, status):
    assert isinstance(error, HeroFeaturesError)
    assert exit_status_of(error) == status


def test_the_api_and_the_cli_say_the_same_words(capsys):
    """A setting no run can use: exit 2 and one line from the CLI, the same text from the
    API (before any model is loaded)."""
    cases = [({"models": ["slowfast", "nope"]}, ["--model", "slowfast,nope"]),
             ({"models": ["resnet"], "clip_len": "0"}, ["--model", "resnet", "--clip_len", "0"]),
             ({"models": ["resnet"], "batch_size": 0}, ["--model", "resnet", "--batch_size",
                                                       "0"]),
             ({"models": ["slowfast"], "min_num_features": 7},
              ["--model", "slowfast", "--min_num_features", "7"])]
    for settings, flags in cases:
        assert main(["extract", "--video_path", str(VIDEOS), "--output_dir", "unused",
                     "--device", "cpu", *flags]) == EXIT_USAGE
        line, = capsys.readouterr().err.splitlines()
        with pytest.raises(UsageError) as raised:
            hero_features.FeatureExtractor(device="cpu", **settings)
        assert line == f"hero-features: error: {raised.value}"
    assert not Path("unused").exists()


def test_a_missing_checkpoint_is_a_weights_error_for_both(tmp_path, monkeypatch, capsys):
    import hero_features.weights as weights

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HERO_FEATURES_WEIGHTS", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "DOCKER_WEIGHTS", empty)
    with pytest.raises(WeightsError) as raised:
        hero_features.FeatureExtractor("clip-vit", device="cpu", weights_dir=empty,
                                       download=False)
    assert "ViT-B-32.pt not found" in str(raised.value)
    assert main(["extract", "--model", "clip-vit", "--video_path", str(VIDEOS),
                 "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--weights_dir",
                 str(empty), "--no_download"]) == EXIT_USAGE
    assert "ViT-B-32.pt not found" in capsys.readouterr().err


def test_the_api_streams_a_result_per_video_and_raises_video_failed(tmp_path,
                                                                   synthetic_checkpoints):
    import numpy as np

    good = VIDEOS / "v07_400x300_25fps_2s.mp4"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with hero_features.FeatureExtractor("clip-vit", device="cpu", batch_size=1,
                                        weights_dir=synthetic_checkpoints,
                                        num_decoding_thread=1) as fx:
        results = {result.video.name: result for result in fx.stream([good, broken])}
        assert sorted(results) == ["broken.mp4", good.name]
        assert results[good.name].ok and results[good.name].rows == {"clip-vit": 1}
        assert results[good.name].features["clip-vit"].dtype == np.float16
        failed = results["broken.mp4"]
        assert not failed.ok and failed.features == {} and failed.failure[0] in ("open", "probe")
        with pytest.raises(VideoFailed) as raised:
            fx.extract(broken)
        assert (raised.value.stage, raised.value.reason) == failed.failure
        assert str(broken) in str(raised.value)
        assert np.array_equal(fx.extract(good)["clip-vit"],
                              results[good.name].features["clip-vit"])
    with pytest.raises(UsageError, match="closed"):
        next(fx.stream([good]))
