"""ResNet-152 end to end through the CLI: parity with the reference goldens, bad input,
resume, and the output contract."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from hero_features.cli import main
from helpers import assert_parity, extract, failures, have_ffmpeg, load, make_audio_only

from conftest import VIDEOS


@pytest.fixture(scope="module")
def resnet_runs(tmp_path_factory, synthetic_checkpoints):
    """One extraction per clip length over the five sample videos (the costly part)."""
    runs = {}
    for clip_len in ("2", "1.5"):
        out = tmp_path_factory.mktemp(f"resnet_{clip_len}")
        status = extract("--model", "resnet", "--video_path", VIDEOS, "--output_dir", out,
                         "--clip_len", clip_len, "--num_decoding_thread", "2",
                         "--batch_size", "4", weights=synthetic_checkpoints)
        runs[clip_len] = (status, out)
    return runs


@pytest.mark.parametrize("clip_len", ["2", "1.5"])
def test_parity_with_reference_goldens(resnet_runs, clip_len):
    status, out = resnet_runs[clip_len]
    assert status == 0
    assert_parity(f"resnet_{clip_len}", out / "resnet_features")


def test_outputs_are_unit_norm_float16_rows(resnet_runs):
    _, out = resnet_runs["2"]
    features = load(out / "resnet_features" / "v01_640x360_25fps_10s.npz")
    assert features.dtype == np.float16 and features.shape == (5, 2048)
    assert np.allclose(np.linalg.norm(features.astype(np.float32), axis=1), 1, atol=2e-3)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_clip_len_spellings_agree(tmp_path, synthetic_checkpoints, resnet_runs):
    _, reference = resnet_runs["1.5"]
    video_dir = tmp_path / "v"
    video_dir.mkdir()
    shutil.copy(VIDEOS / "v07_400x300_25fps_2s.mp4", video_dir)
    assert extract("--model", "resnet", "--video_path", video_dir, "--output_dir", tmp_path / "o",
                   "--clip_len", "3/2", "--num_decoding_thread", "0",
                   weights=synthetic_checkpoints) == 0
    ours = load(tmp_path / "o" / "resnet_features" / "v07_400x300_25fps_2s.npz")
    assert np.array_equal(ours, load(reference / "resnet_features" / "v07_400x300_25fps_2s.npz"))


def test_rerun_skips_complete_outputs_and_redoes_broken_ones(tmp_path, synthetic_checkpoints,
                                                            capsys):
    video_dir = tmp_path / "v"
    (video_dir / "sub").mkdir(parents=True)
    shutil.copy(VIDEOS / "v07_400x300_25fps_2s.mp4", video_dir / "a.mp4")
    shutil.copy(VIDEOS / "v07_400x300_25fps_2s.mp4", video_dir / "sub" / "a.mp4")
    out = tmp_path / "o"
    args = ("--model", "resnet", "--video_path", video_dir, "--output_dir", out,
            "--num_decoding_thread", "0")
    assert extract(*args, weights=synthetic_checkpoints) == 0
    first = out / "resnet_features" / "a.npz"
    nested = out / "resnet_features" / "sub" / "a.npz"  # sub-folders mirrored, no collision
    assert first.exists() and nested.exists()
    nested.write_bytes(nested.read_bytes()[:100])  # a half-written file from a crash
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert extract(*args, weights=synthetic_checkpoints) == 0
    assert "1 done, 1 skipped" in capsys.readouterr().err
    assert first.stat().st_mtime_ns == stamp
    assert load(nested).shape == (1, 2048)


@pytest.mark.skipif(not have_ffmpeg(), reason="needs Debian's ffmpeg to make an audio-only file")
def test_bad_videos_are_logged_and_the_good_ones_finish(tmp_path, synthetic_checkpoints):
    video_dir = tmp_path / "v"
    video_dir.mkdir()
    shutil.copy(VIDEOS / "v07_400x300_25fps_2s.mp4", video_dir / "good.mp4")
    (video_dir / "zero.mp4").write_bytes(b"")
    data = (VIDEOS / "bikes.mp4").read_bytes()
    (video_dir / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (video_dir / "text.mp4").write_text("this is not a video\n" * 100)
    make_audio_only(video_dir / "audio.mp4")
    csv = tmp_path / "list.csv"
    rows = ["video_path,feature_path"]
    names = ["good", "zero", "truncated", "text", "audio", "missing"]
    for name in names:
        rows.append(f"{video_dir / (name + '.mp4')},{tmp_path / 'o' / 'resnet_features' / name}.npz")
    csv.write_text("\n".join(rows) + "\n")
    status = extract("--model", "resnet", "--csv", csv, "--output_dir", tmp_path / "o",
                     "--num_decoding_thread", "2", weights=synthetic_checkpoints)
    assert status == 1
    logged = {r["video_path"].rsplit("/", 1)[1]: r for r in failures(tmp_path / "o")}
    assert sorted(logged) == sorted(f"{n}.mp4" for n in names if n != "good")
    assert all(r["model"] == "resnet" and r["stage"] and r["error"] for r in logged.values())
    assert "does not exist" in logged["missing.mp4"]["error"]
    assert "no video stream" in logged["audio.mp4"]["error"]
    written = sorted(p.name for p in (tmp_path / "o" / "resnet_features").iterdir())
    assert written == ["good.npz"]


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["extract", "--model", "nope", "--video_path", str(tmp_path),
                 "--output_dir", str(tmp_path)]) == 2
    assert main(["extract", "--model", "resnet", "--csv", str(tmp_path / "none.csv"),
                 "--output_dir", str(tmp_path), "--device", "cpu"]) == 2
    assert main(["extract", "--model", "resnet", "--video_path", str(tmp_path),
                 "--output_dir", str(tmp_path), "--clip_len", "abc", "--device", "cpu"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--model", "resnet", "--output_dir", str(tmp_path)])  # no input
    assert exc.value.code == 2


def test_missing_weights_offline_names_file_url_and_folders(tmp_path, monkeypatch, capsys):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HERO_FEATURES_WEIGHTS", raising=False)
    video_dir = tmp_path / "v"
    video_dir.mkdir()
    shutil.copy(VIDEOS / "v07_400x300_25fps_2s.mp4", video_dir)
    status = main(["extract", "--model", "resnet", "--video_path", str(video_dir),
                   "--output_dir", str(tmp_path / "o"), "--device", "cpu",
                   "--weights_dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert status == 2
    assert "resnet152-394f9c45.pth" in err
    assert "https://download.pytorch.org/models/resnet152-394f9c45.pth" in err
    assert str(tmp_path / "w") in err
