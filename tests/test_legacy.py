"""The reference's README commands, run through the legacy scripts, give the package's features.

Each README command runs as a subprocess from the folder the README runs it in, with the
container paths moved to tmp: /video -> a two-video corpus (one in a sub-folder), /output ->
tmp, /models -> an empty tmp folder, so checkpoints come from $HERO_FEATURES_WEIGHTS via the
legacy look-up fallback. The same videos go through `hero-features extract` in-process, and
every legacy output must equal it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hero_features.cli
from hero_features import legacy
from hero_features.manifest import read_csv
from helpers import assert_parity_of, extract, load

from conftest import VIDEOS

REPO = Path(__file__).resolve().parent.parent
SHORT = "v07_400x300_25fps_2s.mp4"
NESTED = Path("sub") / "carphone_pristine.mp4"

# (folder the README runs it from, command); the gather scripts' defaults are written out so
# that they can be moved to tmp like every other container path.
README = [
    ("slowfast", "extract_feature/gather_video_paths.py --video_path /video/ "
                 "--feature_path /output/slowfast_features --csv_folder /output/csv"),
    ("slowfast", "extract_feature/extract.py --dataflow --csv /output/csv/slowfast_info.csv "
                 "--batch_size 45 --num_decoding_thread 4 --clip_len 2 "
                 "TEST.CHECKPOINT_FILE_PATH /models/SLOWFAST_8x8_R50.pkl"),
    ("resnets", "gather_video_paths.py --video_path /video/ "
                "--feature_path /output/resnet_features --csv_folder /output/csv"),
    ("resnets", "extract.py --csv /output/csv/resnet_info.csv --num_decoding_thread 4 "
                "--clip_len 2"),
    ("mil-nce", "gather_video_paths.py --video_path /video/ "
                "--feature_path /output/mil-nce_features --csv_folder /output/csv"),
    ("mil-nce", "extract.py --dataflow --csv /output/csv/mil-nce_info.csv --batch_size 45 "
                "--num_decoding_thread 4"),
    ("clip", "gather_video_paths.py --video_path /video/ "
             "--feature_path /output/clip-vit_features --csv_folder /output/csv"),
    ("clip", "extract.py --csv /output/csv/clip-vit_info.csv --num_decoding_thread 4 "
             "--model_version ViT-B/32"),
    ("clip", "extract.py --csv /output/csv/clip-vit_info.csv --num_decoding_thread 4 "
             "--model_version RN50x4"),
]
# model -> the clip_len its README command uses (mil-nce and clip keep their defaults)
CLIP_LEN = {"slowfast": "2", "resnet": "2", "mil-nce": "3/2", "clip-vit": "1.5",
            "clip-rn50x4": "1.5"}
# model -> the golden folder of the reference's own outputs at that clip_len
GOLDEN_FOLDER = {model: f"{model}_{'1.5' if clip_len == '3/2' else clip_len}"
                 for model, clip_len in CLIP_LEN.items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("video")
    (root / NESTED.parent).mkdir()
    shutil.copy(VIDEOS / SHORT, root / SHORT)
    shutil.copy(VIDEOS / NESTED.name, root / NESTED)
    return root


def _container_paths(word: str, video: Path, output: Path, models: Path) -> str:
    for inside, outside in (("/video/", f"{video}/"), ("/output", str(output)),
                            ("/models", str(models))):
        if word.startswith(inside):
            return outside + word[len(inside):]
    return word


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, corpus, synthetic_checkpoints):
    output = tmp_path_factory.mktemp("output")
    models = tmp_path_factory.mktemp("models")  # empty: /models of an image without weights
    env = {**os.environ, "HERO_FEATURES_WEIGHTS": str(synthetic_checkpoints),
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache")), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    runs = []
    for folder, command in README:
        argv = [_container_paths(w, corpus, output, models) for w in command.split()]
        done = subprocess.run([sys.executable, *argv], cwd=REPO / folder, env=env,
                              capture_output=True, text=True, timeout=600)
        runs.append((folder, command, done))
    return output, runs


@pytest.fixture(scope="module")
def package_run(tmp_path_factory, corpus, synthetic_checkpoints) -> Path:
    out = tmp_path_factory.mktemp("package")
    for clip_len, models in (("2", "slowfast,resnet"), ("3/2", "mil-nce,clip-vit,clip-rn50x4")):
        assert extract("--model", models, "--video_path", corpus, "--output_dir", out,
                       "--clip_len", clip_len, "--num_decoding_thread", "0",
                       "--batch_size", "2", weights=synthetic_checkpoints) == 0
    return out


def test_every_readme_command_succeeds(readme_run):
    _, runs = readme_run
    for folder, command, done in runs:
        assert done.returncode == 0, f"{folder}: {command}\n{done.stdout}\n{done.stderr}"


def test_readme_checkpoint_path_falls_back_to_the_weights_folder(readme_run):
    _, runs = readme_run
    slowfast = next(done for _, command, done in runs if "CHECKPOINT_FILE_PATH" in command)
    assert "SLOWFAST_8x8_R50.pkl does not exist; looking" in slowfast.stderr


@pytest.mark.parametrize("model", list(CLIP_LEN))
def test_readme_outputs_equal_the_package(readme_run, package_run, model):
    output, _ = readme_run
    legacy_dir, package_dir = output / f"{model}_features", package_run / f"{model}_features"
    names = sorted(p.relative_to(package_dir) for p in package_dir.rglob("*.npz"))
    assert names == [NESTED.with_suffix(".npz"), Path(SHORT).with_suffix(".npz")]
    assert sorted(p.relative_to(legacy_dir) for p in legacy_dir.rglob("*.npz")) == names
    for name in names:
        got, want = load(legacy_dir / name), load(package_dir / name)
        assert got.dtype == want.dtype == np.float16 and got.shape == want.shape
        # Batch sizes differ (the README's 45 or 64 vs 2): float16 rounding at most.
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                                   rtol=2e-3, atol=2e-3 * float(np.abs(want).max()))
    # ... and both are the reference's own features (its goldens), within the parity bound
    for folder in (legacy_dir, package_dir):
        assert_parity_of(GOLDEN_FOLDER[model], {name.stem: folder / name for name in names})


def test_readme_gather_writes_the_reference_csv_names(readme_run, corpus):
    output, _ = readme_run
    for model in ("slowfast", "resnet", "mil-nce", "clip-vit"):
        rows = read_csv(output / "csv" / f"{model}_info.csv")
        assert [(r.video_path, r.feature_path) for r in rows] == [
            (corpus / v, output / f"{model}_features" / Path(v).with_suffix(".npz"))
            for v in (NESTED, SHORT)]


def test_failure_log_goes_above_the_csv_folder(tmp_path, corpus, synthetic_checkpoints,
                                               monkeypatch):
    monkeypatch.setenv("HERO_FEATURES_WEIGHTS", str(synthetic_checkpoints))
    (tmp_path / "csv").mkdir()
    csv_file = tmp_path / "csv" / "resnet_info.csv"
    csv_file.write_text(f"video_path,feature_path\n{tmp_path / 'gone.mp4'},"
                        f"{tmp_path / 'resnet_features' / 'gone.npz'}\n")
    assert legacy.extract_main("resnets", ["--csv", str(csv_file), "--num_decoding_thread",
                                           "0"]) == 1
    assert "gone.mp4" in (tmp_path / "failed.jsonl").read_text()


# --- flag translation, without running a model ----------------------------------------------

@pytest.fixture
def captured(monkeypatch):
    """hero_features.cli.main replaced by a recorder; also keeps the csv it was given."""
    calls = []

    def fake_main(argv):
        argv = list(argv)
        csv_file = Path(argv[argv.index("--csv") + 1])
        calls.append((argv, csv_file.read_text() if csv_file.is_file() else None))
        return 0

    monkeypatch.setattr(hero_features.cli, "main", fake_main)
    return calls


def _value(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_slowfast_flags_reach_the_cli(captured, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "mine.pkl"
    ckpt.write_bytes(b"x")
    assert legacy.extract_main("slowfast", [
        "--dataflow", "--csv", "/output/csv/slowfast_info.csv", "--batch_size", "45",
        "--num_decoding_thread", "4", "--clip_len", "2", "--overwrite", "--target_framerate",
        "30", "--min_num_features", "2", "TEST.CHECKPOINT_FILE_PATH", str(ckpt),
        "NUM_GPUS", "1"]) == 0
    (argv, _), = captured
    assert argv[:3] == ["extract", "--model", "slowfast"]
    assert _value(argv, "--output_dir") == "/output"
    assert _value(argv, "--csv") == "/output/csv/slowfast_info.csv"
    assert [_value(argv, f) for f in ("--clip_len", "--batch_size", "--num_decoding_thread",
                                      "--target_framerate", "--min_num_features",
                                      "--checkpoint")] == ["2", "45", "4", "30", "2", str(ckpt)]
    assert "--overwrite" in argv and "--dataflow" in argv
    assert argv[-2:] == ["NUM_GPUS", "1"]  # the cli notes and ignores other config keys


def test_reference_defaults(captured):
    legacy.extract_main("slowfast", [])
    legacy.extract_main("mil-nce", ["--csv", "/output/csv/mil-nce_info.csv"])
    legacy.extract_main("resnets", ["--csv", "/output/csv/resnet_info.csv"])
    legacy.extract_main("clip", ["--csv", "/output/csv/clip-vit_info.csv"])
    flags = ("--model", "--clip_len", "--batch_size", "--num_decoding_thread", "--output_dir")
    got = [[_value(argv, f) for f in flags] for argv, _ in captured]
    assert got == [["slowfast", "3/2", "4", "0", "extract_feature"],
                   ["mil-nce", "3/2", "4", "0", "/output"],
                   ["resnet", "1.5", "64", "4", "/output"],
                   ["clip-vit", "1.5", "64", "4", "/output"]]
    assert _value(captured[0][0], "--csv") == "extract_feature/tmp.csv"


def test_a_missing_checkpoint_with_another_name_is_passed_on(captured, tmp_path):
    legacy.extract_main("mil-nce", ["--csv", "x.csv", "--s3d_ckpt", str(tmp_path / "s3d.pth")])
    legacy.extract_main("mil-nce", ["--csv", "x.csv",
                                    "--s3d_ckpt", str(tmp_path / "s3d_howto100m.pth")])
    assert _value(captured[0][0], "--checkpoint") == str(tmp_path / "s3d.pth")
    assert "--checkpoint" not in captured[1][0]


def test_missing_explicit_checkpoint_is_a_usage_error(tmp_path, corpus, capsys):
    csv_file = tmp_path / "x.csv"
    csv_file.write_text(f"video_path,feature_path\n{corpus / SHORT},{tmp_path / 'a.npz'}\n")
    assert legacy.extract_main("slowfast", [
        "--csv", str(csv_file), "TEST.CHECKPOINT_FILE_PATH", str(tmp_path / "other.pkl")]) == 2
    assert "other.pkl does not exist" in capsys.readouterr().err


def test_rn50x4_outputs_are_derived_from_the_vit_csv(captured, tmp_path):
    vit = tmp_path / "csv" / "clip-vit_info.csv"
    vit.parent.mkdir()
    vit.write_text("video_path,feature_path\n/video/a.mp4,/o/clip-vit_features/d/a.npz\n")
    assert legacy.extract_main("clip", ["--csv", str(vit), "--model_version", "RN50x4"]) == 0
    (argv, text), = captured
    assert _value(argv, "--model") == "clip-rn50x4"
    assert _value(argv, "--output_dir") == str(tmp_path)
    assert _value(argv, "--csv") != str(vit)
    assert [(str(r.video_path), str(r.feature_path)) for r in read_csv_text(text, tmp_path)] == \
        [("/video/a.mp4", "/o/clip-rn50x4_features/d/a.npz")]
    assert vit.read_text().count("clip-vit_features") == 1  # the user's csv is left alone


def read_csv_text(text: str, tmp_path: Path):
    copy = tmp_path / "copy.csv"
    copy.write_text(text)
    return read_csv(copy)


def test_rn50x4_refuses_rows_outside_a_vit_folder(captured, tmp_path, capsys):
    vit = tmp_path / "clip.csv"
    vit.write_text("video_path,feature_path\n/video/a.mp4,/o/features/a.npz\n")
    with pytest.raises(SystemExit) as stop:
        legacy.extract_main("clip", ["--csv", str(vit), "--model_version", "RN50x4"])
    assert stop.value.code == 2 and not captured
    assert "/o/features/a.npz" in capsys.readouterr().err


@pytest.mark.parametrize("pipeline, args, message", [
    ("slowfast", ["--pix_fmt", "yuv420p"], "--pix_fmt yuv420p is not supported"),
    ("mil-nce", ["--pix_fmt", "yuv420p"], "--pix_fmt yuv420p is not supported"),
    ("slowfast", ["--cfg", "configs/Kinetics/c2/SLOWFAST_16x8_R101.yaml"], "--cfg"),
    ("resnets", ["--csv", "x.csv", "--l2_normalize", "0"], "--l2_normalize 0"),
    ("resnets", ["--csv", "x.csv", "--half_precision", "0"], "--half_precision 0"),
    ("resnets", ["--csv", "x.csv", "--type", "3d"], "--type 3d"),
    ("clip", ["--csv", "x.csv", "--half_precision", "0"], "--half_precision 0"),
    ("clip", ["--csv", "x.csv", "--model_version", "RN101"], "--model_version RN101"),
])
def test_unsupported_values_exit_2(captured, capsys, pipeline, args, message):
    with pytest.raises(SystemExit) as stop:
        legacy.extract_main(pipeline, args)
    assert stop.value.code == 2 and not captured
    assert message in capsys.readouterr().err


def test_half_precision_is_ignored_where_the_reference_ignored_it(captured, capsys):
    assert legacy.extract_main("mil-nce", ["--csv", "x.csv", "--half_precision", "0"]) == 0
    assert "is ignored, as in the reference" in capsys.readouterr().err
    assert captured


# --- gather ---------------------------------------------------------------------------------

def _gather(pipeline, video, output, *extra):
    model = legacy.PIPELINES[pipeline][0]
    return legacy.gather_main(pipeline, ["--video_path", str(video), "--feature_path",
                                         str(output / f"{model}_features"), "--csv_folder",
                                         str(output / "csv"), *extra])


def _listed(output: Path, model: str) -> list[str]:
    return [r.video_path.name for r in read_csv(output / "csv" / f"{model}_info.csv")]


def _finish(path: Path, dim: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=np.zeros((2, dim), np.float16))


def test_gather_skips_finished_outputs_and_relists_corrupted_ids(tmp_path, corpus):
    out = tmp_path / "out"
    _finish(out / "resnet_features" / "sub" / "carphone_pristine.npz", 2048)
    _finish(out / "resnet_features" / "v07_400x300_25fps_2s.npz", 2048)
    assert _gather("resnets", corpus, out) == 0
    assert _listed(out, "resnet") == []
    ids = tmp_path / "ids.json"
    ids.write_text('["carphone_pristine"]')
    assert _gather("resnets", corpus, out, "--corrupted_id_file", str(ids)) == 0
    assert _listed(out, "resnet") == ["carphone_pristine.mp4"]  # once, not twice
    ids.write_text('["v07_400x300_25fps_2s", "sub/carphone_pristine"]')
    assert _gather("resnets", corpus, out, "--corrupted_id_file", str(ids)) == 0
    assert _listed(out, "resnet") == ["carphone_pristine.mp4", SHORT]


def test_clip_gather_lists_a_video_until_both_clip_models_are_done(tmp_path, corpus):
    out = tmp_path / "out"
    for name in (NESTED, Path(SHORT)):
        _finish(out / "clip-vit_features" / name.with_suffix(".npz"), 512)
    _finish(out / "clip-rn50x4_features" / NESTED.with_suffix(".npz"), 640)
    assert _gather("clip", corpus, out) == 0
    assert _listed(out, "clip-vit") == [SHORT]


@pytest.mark.parametrize("problem", ["missing root", "collision", "bad ids"])
def test_gather_errors_exit_2(tmp_path, corpus, capsys, problem):
    video, extra = corpus, []
    if problem == "missing root":
        video = tmp_path / "nowhere"
    elif problem == "collision":
        video = tmp_path / "v"
        video.mkdir()
        shutil.copy(VIDEOS / SHORT, video / "x.mp4")
        shutil.copy(VIDEOS / SHORT, video / "x.webm")
    else:
        (tmp_path / "ids.json").write_text('{"not": "a list"}')
        extra = ["--corrupted_id_file", str(tmp_path / "ids.json")]
    with pytest.raises(SystemExit) as stop:
        _gather("slowfast", video, tmp_path / "out", *extra)
    assert stop.value.code == 2
    assert not (tmp_path / "out" / "csv").exists()
    assert capsys.readouterr().err


# --- setup.sh -------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_setup_sh_puts_the_package_source_first_once():
    script = REPO / "setup.sh"
    done = subprocess.run(["bash", "-c", f'source "{script}" >/dev/null; source "{script}"'],
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": "/elsewhere"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{REPO.resolve() / 'src'}:/elsewhere"
