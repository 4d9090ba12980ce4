"""A newcomer's first hour: what the CLI says and does on the usual first mistakes.

gather's absolute paths, a folder without videos, checkpoints that are missing or not the
published files, `download --from`, `pack` without its extra, the help text, the `models`
table, progress in video-seconds, and quickstart.sh's install (with stand-ins for python3).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hero_features.models as registry
import hero_features.pipeline as pipeline
import hero_features.weights as weights
from hero_features import legacy
from hero_features.cli import build_parser, main
from hero_features.manifest import read_csv
from hero_features.models import MODEL_IDS, get_spec
from hero_features.progress import VideoProgress
from videos import write_video

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory) -> Path:
    """4 s at 10 fps, 64x48: four rows at clip_len 1."""
    folder = tmp_path_factory.mktemp("tiny")
    return write_video(folder / "tiny.mp4", frames=40, fps=10, width=64, height=48)


@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch) -> Path:
    """No checkpoint anywhere: an empty --weights_dir, no $HERO_FEATURES_WEIGHTS, no /models,
    an empty cache."""
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(weights, "DOCKER_WEIGHTS", tmp_path / "no-models")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return empty


# == gather =======================================================================================

def test_gather_writes_absolute_paths(tmp_path, tiny_video, monkeypatch):
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    shutil.copy(tiny_video, tmp_path / "videos" / "sub" / "a.mp4")
    monkeypatch.chdir(tmp_path)
    assert main(["gather", "--model", "resnet", "--video_path", "videos",
                 "--output_dir", "out"]) == 0
    rows = read_csv(tmp_path / "out" / "csv" / "resnet_info.csv")
    assert [(r.video_path, r.feature_path) for r in rows] == [
        (tmp_path / "videos" / "sub" / "a.mp4", tmp_path / "out" / "resnet_features" / "sub" / "a.npz")]
    # so that extract --csv finds the video from anywhere
    assert all(r.video_path.is_absolute() and r.video_path.is_file() for r in rows)


def test_legacy_gather_writes_absolute_paths_and_no_empty_feature_folder(tmp_path, tiny_video,
                                                                         monkeypatch):
    (tmp_path / "videos").mkdir()
    shutil.copy(tiny_video, tmp_path / "videos" / "a.mp4")
    monkeypatch.chdir(tmp_path)
    assert legacy.gather_main("clip", ["--video_path", "videos", "--feature_path",
                                       "out/clip-vit_features", "--csv_folder", "out/csv"]) == 0
    rows = read_csv(tmp_path / "out" / "csv" / "clip-vit_info.csv")
    assert [(r.video_path, r.feature_path) for r in rows] == [
        (tmp_path / "videos" / "a.mp4", tmp_path / "out" / "clip-vit_features" / "a.npz")]
    # The clip csv serves RN50x4 too: an RN50x4-only run must not leave clip-vit_features/.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["csv"]


def test_a_folder_without_videos_exits_2_everywhere(tmp_path, capsys):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / "notes.txt").write_text("not a video")
    out = tmp_path / "out"
    assert main(["extract", "--model", "resnet", "--video_path", str(videos),
                 "--output_dir", str(out), "--device", "cpu"]) == 2
    assert "no videos found under" in capsys.readouterr().err
    assert main(["gather", "--video_path", str(videos), "--output_dir", str(out)]) == 2
    assert "no videos found under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        legacy.gather_main("resnets", ["--video_path", str(videos), "--feature_path",
                                       str(out / "resnet_features"), "--csv_folder",
                                       str(out / "csv")])
    assert stop.value.code == 2
    assert "no videos found under" in capsys.readouterr().err
    assert not out.exists()


# == checkpoints ==================================================================================

def test_extract_names_every_missing_checkpoint_at_once(tmp_path, no_checkpoints, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "x.mp4").write_bytes(b"never opened: the checkpoints are checked first")
    status = main(["extract", "--model", "slowfast,resnet,mil-nce", "--video_path", str(videos),
                   "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--no_download",
                   "--weights_dir", str(no_checkpoints)])
    assert status == 2
    err = capsys.readouterr().err
    assert "3 checkpoints are missing" in err
    for name in ("SLOWFAST_8x8_R50.pkl", "resnet152-394f9c45.pth", "s3d_howto100m.pth"):
        assert f"checkpoint {name} not found" in err
    # MIL-NCE: no working download to offer; says so and what to do instead.
    mil_nce = next(line for line in err.splitlines() if "s3d_howto100m.pth not found" in line)
    assert "is dead" in mil_nce and "Fetch it from" not in mil_nce
    assert "--weights_dir DIR" in mil_nce and "HERO_FEATURES_WEIGHTS" in mil_nce
    assert "Fetch it from https://dl.fbaipublicfiles.com" in err  # slowfast's still works
    assert not (tmp_path / "out").exists()  # nothing left behind


def test_a_checkpoint_that_is_not_the_published_file_is_warned_about_once(
        tmp_path, synthetic_checkpoints, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "x.mp4").write_bytes(b"not a video")  # fails fast, after the checkpoint check
    status = main(["extract", "--model", "resnet", "--video_path", str(videos), "--output_dir",
                   str(tmp_path / "out"), "--device", "cpu", "--no_progress",
                   "--num_decoding_thread", "0", "--weights_dir", str(synthetic_checkpoints)])
    assert status == 1  # the one "video" failed
    err = capsys.readouterr().err
    assert err.count("HASH MISMATCH") == 1
    warning = next(line for line in err.splitlines() if "HASH MISMATCH" in line)
    assert warning.startswith("hero-features extract: WARNING")
    assert str(synthetic_checkpoints / "resnet152-394f9c45.pth") in warning
    assert "will NOT match the released ones" in warning
    # download warns too (the file is there, so nothing is fetched)
    assert main(["download", "--model", "resnet,mil-nce", "--weights_dir",
                 str(synthetic_checkpoints)]) == 0
    err = capsys.readouterr().err
    assert err.count("HASH MISMATCH") == 1 and "resnet152-394f9c45.pth" in err
    assert "s3d_howto100m.pth" not in err  # no published hash: nothing to compare


PAYLOAD = b"published bytes" * 1000


@pytest.fixture
def resnet_hash(monkeypatch):
    """resnet's published hash is PAYLOAD's, so a test can hold "the published file"."""
    spec = registry.REGISTRY["resnet"]
    monkeypatch.setitem(registry.REGISTRY, "resnet", dataclasses.replace(
        spec, checkpoint=dataclasses.replace(spec.checkpoint,
                                             sha256=hashlib.sha256(PAYLOAD).hexdigest())))


def test_download_from_a_folder_verifies_and_installs(tmp_path, resnet_hash, capsys):
    source, target = tmp_path / "usb", tmp_path / "weights"
    source.mkdir()
    (source / "resnet152-394f9c45.pth").write_bytes(PAYLOAD)
    (source / "ViT-B-32.pt").write_bytes(b"not the published ViT-B/32")
    (source / "s3d_howto100m.pth").write_bytes(b"no hash is published for this one")
    argv = ["download", "--from", str(source), "--weights_dir", str(target), "--model"]
    assert main(argv + ["resnet,clip-vit,mil-nce,slowfast"]) == 1
    captured = capsys.readouterr()
    assert (target / "resnet152-394f9c45.pth").read_bytes() == PAYLOAD
    assert (target / "s3d_howto100m.pth").is_file()
    assert not (target / "ViT-B-32.pt").exists()  # refused, not installed
    assert f"resnet: {target / 'resnet152-394f9c45.pth'}" in captured.out
    assert "clip-vit:" in captured.err and "does not match the published sha256" in captured.err
    assert "slowfast: SLOWFAST_8x8_R50.pkl is not in" in captured.err
    assert sorted(p.name for p in target.iterdir()) == ["resnet152-394f9c45.pth",
                                                        "s3d_howto100m.pth"]  # no .part left
    # again: the same bytes are there already
    assert main(argv + ["resnet"]) == 0
    # a different file under the name is not overwritten
    (source / "s3d_howto100m.pth").write_bytes(b"another file")
    assert main(argv + ["mil-nce"]) == 1
    assert "already exists and differs" in capsys.readouterr().err
    assert main(["download", "--from", str(tmp_path / "nowhere")]) == 2


def test_models_exits_1_on_a_hash_mismatch_and_aligns_its_columns(tmp_path, capsys,
                                                                  no_checkpoints):
    (no_checkpoints / "resnet152-394f9c45.pth").write_bytes(b"not the published file")
    assert main(["models", "--weights_dir", str(no_checkpoints)]) == 1
    captured = capsys.readouterr()
    assert "HASH MISMATCH" in captured.err and "resnet152-394f9c45.pth" in captured.err
    lines = captured.out.splitlines()
    header = lines[0]
    for column in ("dim", "unit", "decode", "checkpoint"):
        assert column in header
    for line, name in zip(lines[1:], MODEL_IDS):
        spec = get_spec(name)
        rate = "30 fps" if spec.unit == "clip" else "1/clip_len fps"
        assert line.index(spec.unit) == header.index("unit")
        assert line.index(rate) == header.index("decode")
        assert line.index(spec.checkpoint.filename) == header.index("checkpoint")
    # without the mismatching file: 0
    (no_checkpoints / "resnet152-394f9c45.pth").unlink()
    assert main(["models", "--weights_dir", str(no_checkpoints)]) == 0


# == pack without its extra =======================================================================

def test_pack_without_its_extra_says_which_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lmdb", None)  # as if not installed
    out = tmp_path / "out"
    (out / "slowfast_features").mkdir(parents=True)
    (out / "resnet_features").mkdir()
    assert main(["pack", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lmdb" in err and "pip install 'hero-features[pack]'" in err
    assert not (out / "video_db").exists()


# == --help =======================================================================================

def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_defaults_are_shown():
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"{command} {action.option_strings[0]} has no help"
    text = " ".join(_subparsers()["extract"].format_help().split())  # help lines wrap anywhere
    assert "(default: 3/2)" in text and "(default: 32)" in text and "(default: 300.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


# == progress =====================================================================================

def test_progress_counts_video_seconds():
    bar = VideoProgress(videos=3, enabled=False)
    assert bar.estimated_total() is None
    bar.begin("a", 10.0)
    bar.reach("a", 4.0)
    assert bar.position() == 4.0
    assert bar.estimated_total() == 30.0  # 10 s known, two more videos of the mean length
    bar.reach("a", 3.0)  # never back
    bar.reach("a", 12.0)  # never past the end
    assert bar.position() == 10.0
    bar.end("a", ok=True, seconds=10.0)
    bar.begin("b", None)  # no duration (a WebM stream)
    bar.reach("b", 2.0)
    assert bar.position() == 12.0 and bar.estimated_total() == 30.0
    bar.end("b", ok=False)  # a failure counts what was decoded
    assert (bar.done, bar.failed, bar.position()) == (1, 1, 12.0)
    assert bar.estimated_total() == 22.0  # one video left, of the mean known length


def test_the_bar_moves_inside_a_video_and_the_summary_names_the_shard(
        tmp_path, tiny_video, synthetic_checkpoints, monkeypatch, capsys):
    events = []

    class Recording(VideoProgress):
        def begin(self, key, duration):
            events.append(("begin", duration))
            super().begin(key, duration)

        def reach(self, key, seconds):
            events.append(("reach", seconds))
            super().reach(key, seconds)

        def end(self, key, ok, seconds=None):
            events.append(("end", ok))
            super().end(key, ok, seconds)

    monkeypatch.setattr(pipeline, "VideoProgress", Recording)
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(tiny_video, videos / "tiny.mp4")
    assert main(["extract", "--model", "clip-vit", "--video_path", str(videos), "--output_dir",
                 str(tmp_path / "out"), "--device", "cpu", "--num_decoding_thread", "0",
                 "--clip_len", "1", "--batch_size", "1", "--shard", "0/1",
                 "--weights_dir", str(synthetic_checkpoints)]) == 0
    assert events[0] == ("begin", 4.0) and events[-1] == ("end", True)
    positions = [seconds for kind, seconds in events if kind == "reach"]
    assert positions == [1.0, 2.0, 3.0, 4.0]  # one row per batch of 1: the bar moves per row
    err = capsys.readouterr().err
    assert "videos (shard 0/1): 1 done" in err
    assert "video-s/s" in err and "4.00/4.00 video-s" in err


# == quickstart.sh ================================================================================

STAND_IN_PYTHON = """#!/bin/sh
# python3 -m venv .venv: a venv whose pip and hero-features only record their arguments
[ "$1 $2" = "-m venv" ] || exit 97
mkdir -p "$3/bin"
for tool in pip hero-features; do
    printf '#!/bin/sh\\necho "%s $*" >> "$CALLS"\\n' "$tool" > "$3/bin/$tool"
    chmod +x "$3/bin/$tool"
done
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_quickstart_shows_install_progress_and_how_to_get_the_cpu_build(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(REPO / "quickstart.sh", checkout)
    bin_dir = tmp_path / "bin"  # python3 stand-in, no nvidia-smi
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STAND_IN_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    for tool in ("dirname", "mkdir", "chmod"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "CALLS": str(tmp_path / "calls.txt"), "HOME": str(tmp_path)}
    done = subprocess.run([shutil.which("bash"), str(checkout / "quickstart.sh"), "--device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    installs = [c for c in calls if c.startswith("pip install")]
    assert installs and not any("--quiet" in c or " -q" in c for c in installs)
    assert calls[-1] == ("hero-features extract --model slowfast --model resnet --video_path "
                         "samples --output_dir output --device cpu")
    assert "https://download.pytorch.org/whl/cpu" in done.stderr  # no GPU seen: the CPU build
