"""What users type, through the CLI: --overwrite, --shard, --ray, --video_timeout,
--no_download, gather -> extract --csv (several models) -> pack, and the usage errors that
must exit 2 before anything is touched.

Everything goes through `hero_features.cli.main([...])` (in-process, with the models loaded
once per module) or through a `hero-features` / `python -m hero_features` subprocess where
the process itself matters (exit status, Ray). Videos are tiny and made once per module.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import bad_corpus
import faults
import hero_features.pipeline as pipeline
import hero_features.weights as weights
import hero_features.workers as workers
from hero_features.cli import main
from hero_features.shards import shard_of
from hero_features.manifest import feature_path, is_complete, read_csv
from hero_features.models import MODEL_IDS, get_spec
from helpers import assert_parity_of, failures, load

from conftest import VIDEOS

SRC = Path(__file__).resolve().parent.parent / "src"
SHORT = "v07_400x300_25fps_2s.mp4"  # 2 s: 1 resnet row, 1 slowfast clip at clip_len 3/2


def _extract(out: Path, *args, weights_dir: Path) -> int:
    # Batches have one fixed shape, padded: on these one-row videos a batch of one is the
    # cheapest (a test that needs another passes --batch_size, which comes later and wins).
    return main(["extract", "--device", "cpu", "--no_progress", "--output_dir", str(out),
                 "--weights_dir", str(weights_dir), "--batch_size", "1", *map(str, args)])


def _summary(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("videos"))


def _tiny(path: Path, width: int = 96, seconds: float = 2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return bad_corpus.encode(path, int(seconds * bad_corpus.FPS), container_format="mp4",
                             width=width, height=64)


# == --overwrite ==============================================================================

def test_overwrite_rewrites_the_outputs_of_every_model(tmp_path, synthetic_checkpoints,
                                                       cached_models, capsys):
    videos = tmp_path / "videos"
    video = _tiny(videos / "a.mp4")
    models = ("--model", ",".join(MODEL_IDS), "--video_path", videos, "--batch_size", "4",
              "--num_decoding_thread", "0")
    fresh = tmp_path / "fresh"
    assert _extract(fresh, *models, weights_dir=synthetic_checkpoints) == 0
    expected = {m: load(feature_path(video, videos, fresh, m)) for m in MODEL_IDS}

    # Complete-looking outputs with the wrong values: a rerun takes them as done...
    out = tmp_path / "out"
    planted = {}
    for model in MODEL_IDS:
        path = feature_path(video, videos, out, model)
        path.parent.mkdir(parents=True)
        np.savez(path, features=np.zeros_like(expected[model]))
        assert is_complete(path, get_spec(model).dim)
        planted[model] = os.stat(path)
    capsys.readouterr()
    assert _extract(out, *models, weights_dir=synthetic_checkpoints) == 0
    assert _summary(capsys.readouterr().err).startswith("videos: 0 done, 1 skipped")
    for model in MODEL_IDS:
        path = feature_path(video, videos, out, model)
        assert os.stat(path).st_ino == planted[model].st_ino
        assert not load(path).any()

    # ...and --overwrite redoes every model's file: new files, the fresh run's values.
    assert _extract(out, *models, "--overwrite", weights_dir=synthetic_checkpoints) == 0
    assert _summary(capsys.readouterr().err).startswith("videos: 1 done, 0 skipped")
    for model in MODEL_IDS:
        path = feature_path(video, videos, out, model)
        now = os.stat(path)
        assert now.st_ino != planted[model].st_ino, model
        assert now.st_mtime_ns > planted[model].st_mtime_ns, model
        assert np.array_equal(load(path), expected[model]), model
    assert not list(out.rglob("*.tmp"))


# == --shard K/N ==============================================================================

# The cheapest model (ViT-B/32, a quarter of ResNet-152's work per frame) where the model
# does not matter.
LIGHT = "clip-vit"
SHARDS = 3
SHARD_VIDEOS = ("a.mp4", "b.mp4", "c.mkv", "sub/d.mp4", "sub/e.mp4", "sub/deeper/f.mp4")


@pytest.fixture(scope="module")
def shard_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shard_videos")
    for i, name in enumerate(SHARD_VIDEOS):  # other widths, so a mix-up would show
        _tiny(root / name, width=64 + 8 * i)
    return root


@pytest.fixture(scope="module")
def unsharded(shard_videos, synthetic_checkpoints, cached_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("unsharded")
    assert _extract(out, "--model", LIGHT, "--video_path", shard_videos, "--batch_size", "1",
                    "--num_decoding_thread", "0", weights_dir=synthetic_checkpoints) == 0
    return {name: load(feature_path(shard_videos / name, shard_videos, out, LIGHT))
            for name in SHARD_VIDEOS}


def _run_shards(out: Path, source: list, key, shard_videos: Path, weights_dir: Path,
                capsys) -> list[set]:
    """Every shard of one run, one after the other into one output folder (as array jobs on
    shared storage); returns the videos each shard wrote."""
    def written() -> set:
        return {name for name in SHARD_VIDEOS
                if feature_path(shard_videos / name, shard_videos, out, LIGHT).exists()}

    per_shard = []
    for k in range(SHARDS):
        before = written()
        capsys.readouterr()
        assert _extract(out, "--model", LIGHT, *source, "--shard", f"{k}/{SHARDS}",
                        "--batch_size", "1", "--num_decoding_thread", "0",
                        weights_dir=weights_dir) == 0
        new = written() - before
        assert new == {name for name in SHARD_VIDEOS if shard_of(key(name), SHARDS) == k}
        count = len(new)
        assert _summary(capsys.readouterr().err) == (f"videos (shard {k}/{SHARDS}): {count} done, "
                                                     f"0 skipped (already complete), 0 failed, "
                                                     f"of {count}")
        per_shard.append(new)
    return per_shard


def _assert_union_is_the_full_run(per_shard: list[set], out: Path, shard_videos: Path,
                                  unsharded: dict) -> None:
    assert sum(len(s) for s in per_shard) == len(SHARD_VIDEOS)  # nobody twice...
    assert set().union(*per_shard) == set(SHARD_VIDEOS)  # ...nobody left out
    assert sum(bool(s) for s in per_shard) >= 2, "these names do not split; pick others"
    for name in SHARD_VIDEOS:
        got = load(feature_path(shard_videos / name, shard_videos, out, LIGHT))
        assert np.array_equal(got, unsharded[name]), name


def test_folder_shards_together_are_the_full_run(tmp_path, shard_videos, unsharded,
                                                 synthetic_checkpoints, cached_models, capsys):
    out = tmp_path / "out"
    # folder mode: the key is the path below --video_path, whatever the mount point
    per_shard = _run_shards(out, ["--video_path", shard_videos], lambda name: name,
                            shard_videos, synthetic_checkpoints, capsys)
    _assert_union_is_the_full_run(per_shard, out, shard_videos, unsharded)


def test_csv_shards_together_are_the_full_run(tmp_path, shard_videos, unsharded,
                                              synthetic_checkpoints, cached_models, capsys):
    out = tmp_path / "out"
    assert main(["gather", "--video_path", str(shard_videos), "--output_dir", str(out),
                 "--model", LIGHT]) == 0
    csv_file = out / "csv" / f"{LIGHT}_info.csv"
    assert [r.video_path for r in read_csv(csv_file)] == \
        sorted(shard_videos / name for name in SHARD_VIDEOS)
    # csv mode: the key is the video path as the csv writes it
    per_shard = _run_shards(out, ["--csv", csv_file],
                            lambda name: (shard_videos / name).as_posix(), shard_videos,
                            synthetic_checkpoints, capsys)
    _assert_union_is_the_full_run(per_shard, out, shard_videos, unsharded)


# == --ray ====================================================================================

def test_ray_through_the_cli(tmp_path, synthetic_checkpoints):
    """`hero-features extract --ray` on a local Ray instance that the run starts and stops:
    the reference's features, the broken video logged, exit 1."""
    pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]')")
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(VIDEOS / SHORT, videos / "sub" / SHORT)
    (videos / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)  # a new local instance, as on a workstation
    done = subprocess.run([sys.executable, "-m", "hero_features", "extract", "--ray",
                           "--model", LIGHT, "--video_path", str(videos), "--output_dir",
                           str(out), "--weights_dir", str(synthetic_checkpoints),
                           "--no_progress"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _summary(done.stderr) == "videos: 1 done, 0 skipped (already complete), 1 failed, of 2"
    logged = failures(out)
    assert [Path(f["video_path"]).name for f in logged] == ["broken.mp4"]
    assert logged[0]["stage"] in ("open", "probe")
    assert not (out / f"{LIGHT}_features" / "broken.npz").exists()
    assert_parity_of(f"{LIGHT}_1.5", {Path(SHORT).stem: out / f"{LIGHT}_features" / "sub" /
                                      Path(SHORT).with_suffix(".npz")})


# == --video_timeout ==========================================================================

@pytest.fixture
def timed_pools(monkeypatch):
    """The video_timeout every DecodePool of a run was given."""
    seen = []
    real = pipeline.DecodePool

    def recording(*args, **kwargs):
        pool = real(*args, **kwargs)
        seen.append(pool.video_timeout)
        return pool

    monkeypatch.setattr(pipeline, "DecodePool", recording)
    return seen


@pytest.mark.parametrize("flag, limit", [(None, 300.0), ("7.5", 7.5), ("0", None)],
                         ids=["default", "7.5", "0-no-limit"])
def test_video_timeout_reaches_the_decode_workers(tmp_path, flag, limit, timed_pools,
                                                  synthetic_checkpoints, cached_models):
    videos = tmp_path / "videos"
    _tiny(videos / "a.mp4")
    extra = [] if flag is None else ["--video_timeout", flag]
    assert _extract(tmp_path / "out", "--model", LIGHT, "--video_path", videos,
                    "--num_decoding_thread", "1", *extra,
                    weights_dir=synthetic_checkpoints) == 0
    assert timed_pools == [limit]


def test_a_decode_stalled_past_video_timeout_is_logged_and_the_run_goes_on(
        tmp_path, monkeypatch, synthetic_checkpoints, cached_models, capsys):
    videos = tmp_path / "videos"
    _tiny(videos / "a.mp4")
    _tiny(videos / "b.mp4")  # never gets past its start
    out = tmp_path / "out"
    monkeypatch.setenv(faults.GATE_ENV, f"b.mp4:{tmp_path / 'b-started'}")
    monkeypatch.setattr(pipeline, "DecodePool",
                        functools.partial(pipeline.DecodePool, decode_fn=faults.gated_decode))
    status = _extract(out, "--model", LIGHT, "--video_path", videos,
                      "--num_decoding_thread", "1", "--video_timeout", "1",
                      weights_dir=synthetic_checkpoints)
    err = capsys.readouterr().err
    assert status == 1, err
    assert (tmp_path / "b-started").exists()
    logged = failures(out)
    assert [(Path(f["video_path"]).name, f["stage"]) for f in logged] == [("b.mp4", "decode")]
    assert "--video_timeout" in logged[0]["error"] and "killed" in logged[0]["error"]
    assert load(feature_path(videos / "a.mp4", videos, out, LIGHT)).shape == (1, 512)


def test_video_timeout_0_lets_a_decode_stall_for_as_long_as_it_takes(
        tmp_path, monkeypatch, synthetic_checkpoints, cached_models):
    """The decode of b.mp4 produces nothing until the run's own decode loop has waited three
    whole rounds (>= 3 s) on it; with a limit of 1 s it would have been killed."""
    videos = tmp_path / "videos"
    _tiny(videos / "a.mp4")
    _tiny(videos / "b.mp4")
    out, started, release = tmp_path / "out", tmp_path / "b-started", tmp_path / "b-release"
    monkeypatch.setenv(faults.STALL_ENV, f"b.mp4:{started}:{release}")
    monkeypatch.setattr(pipeline, "DecodePool",
                        functools.partial(pipeline.DecodePool,
                                          decode_fn=faults.stalling_decode))
    real_wait, idle_rounds = workers.wait, []

    def wait(objects, timeout=None):
        ready = real_wait(objects, timeout)
        if not ready and timeout and started.exists():  # a whole round with nothing from b
            idle_rounds.append(timeout)
            if sum(idle_rounds) >= 3:
                release.touch()
        return ready

    monkeypatch.setattr(workers, "wait", wait)
    assert _extract(out, "--model", LIGHT, "--video_path", videos, "--num_decoding_thread",
                    "1", "--video_timeout", "0", weights_dir=synthetic_checkpoints) == 0
    assert release.exists() and sum(idle_rounds) >= 3
    assert failures(out) == []
    for name in ("a.mp4", "b.mp4"):
        assert load(feature_path(videos / name, videos, out, LIGHT)).shape == (1, 512)


# == --no_download ============================================================================

@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch):
    """Every look-up folder empty, and every download attempt recorded (and refused)."""
    for name in ("env", "docker", "xdg"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(tmp_path / "env"))
    monkeypatch.setattr(weights, "DOCKER_WEIGHTS", tmp_path / "docker")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    attempts = []

    def urlopen(request, *args, **kwargs):
        attempts.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("the network is off in this test")

    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    return attempts


@pytest.mark.parametrize("no_download", [True, False], ids=["--no_download", "default"])
def test_no_download_exits_2_without_touching_the_network(tmp_path, no_checkpoints,
                                                         no_download, capsys):
    videos = tmp_path / "videos"
    _tiny(videos / "a.mp4")
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    extra = ["--no_download"] if no_download else []
    status = _extract(tmp_path / "out", "--model", "resnet", "--video_path", videos,
                      "--num_decoding_thread", "0", *extra, weights_dir=weights_dir)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert "resnet152-394f9c45.pth" in err
    if no_download:
        assert no_checkpoints == [] and "downloads are disabled" in err
        assert list(weights_dir.iterdir()) == []  # not even a lock file
    else:  # the same run without the flag does go for the file: the recorder sees it
        assert no_checkpoints == [get_spec("resnet").checkpoint.url]


# == gather -> extract --csv (two models) -> pack =============================================

@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, synthetic_checkpoints, cached_models):
    """gather, then ONE extract of slowfast + resnet from the slowfast csv, through main()."""
    videos = tmp_path_factory.mktemp("csv_videos")
    (videos / "sub").mkdir()
    shutil.copy(VIDEOS / SHORT, videos / SHORT)
    shutil.copy(VIDEOS / SHORT, videos / "sub" / SHORT)
    out = tmp_path_factory.mktemp("csv_out")
    assert main(["gather", "--video_path", str(videos), "--output_dir", str(out),
                 "--model", "slowfast,resnet"]) == 0
    status = _extract(out, "--model", "slowfast", "--model", "resnet", "--csv",
                      out / "csv" / "slowfast_info.csv", "--num_decoding_thread", "0",
                      weights_dir=synthetic_checkpoints)
    return videos, out, status


def test_gather_lists_every_video_for_every_model(csv_run):
    videos, out, _ = csv_run
    for model in ("slowfast", "resnet"):
        rows = read_csv(out / "csv" / f"{model}_info.csv")
        assert [(r.video_path, r.feature_path) for r in rows] == [
            (videos / v, out / f"{model}_features" / Path(v).with_suffix(".npz"))
            for v in (f"sub/{SHORT}", SHORT)]


def test_several_models_from_one_csv_write_each_models_folder(csv_run):
    _, out, status = csv_run
    assert status == 0
    stem = Path(SHORT).stem
    for model in ("slowfast", "resnet"):
        folder = out / f"{model}_features"
        assert sorted(p.relative_to(folder) for p in folder.rglob("*.npz")) == \
            [Path(f"sub/{stem}.npz"), Path(f"{stem}.npz")]
        for name in (f"{stem}.npz", f"sub/{stem}.npz"):
            assert_parity_of(f"{model}_1.5", {stem: folder / name})


def test_pack_through_the_cli_reads_back_as_hero_reads_it(csv_run, tmp_path, capsys):
    lmdb = pytest.importorskip("lmdb")
    msgpack = pytest.importorskip("msgpack")
    msgpack_numpy = pytest.importorskip("msgpack_numpy")
    _, out, _ = csv_run
    db_dir = tmp_path / "db"
    capsys.readouterr()
    assert main(["pack", "--output_dir", str(out), "--db_dir", str(db_dir)]) == 0
    assert "packed 2 videos" in capsys.readouterr().out
    stem = Path(SHORT).stem
    expected = {}
    for vid in (stem, f"sub/{stem}"):
        resnet = load(out / "resnet_features" / f"{vid}.npz")
        slowfast = load(out / "slowfast_features" / f"{vid}.npz")
        rows = min(len(resnet), len(slowfast))
        expected[vid] = np.concatenate((resnet[:rows].astype(np.float32),
                                        slowfast[:rows].astype(np.float32)), axis=1)
    env = lmdb.open(str(db_dir / "resnet_slowfast_1.5"), readonly=True, create=False,
                    readahead=False)
    try:
        with env.begin(buffers=True) as txn:
            keys = sorted(bytes(k).decode() for k, _ in txn.cursor())
            assert keys == sorted(expected)
            for vid, features in expected.items():
                value = msgpack.loads(bytes(txn.get(vid.encode())), raw=False,
                                      object_hook=msgpack_numpy.decode)
                assert np.array_equal(value["features"], features), vid
    finally:
        env.close()
    assert json.loads((db_dir / "id2frame_len.json").read_text()) == \
        {vid: len(f) for vid, f in expected.items()}


def test_pack_without_features_exits_2(tmp_path, capsys):
    assert main(["pack", "--output_dir", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("hero-features: error: ")


def test_several_models_need_model_folders_in_the_csv(tmp_path, capsys):
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(f"video_path,feature_path\n{VIDEOS / SHORT},{tmp_path / 'x' / 'a.npz'}\n")
    status = main(["extract", "--model", "slowfast,resnet", "--csv", str(csv_file),
                   "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--no_progress"])
    err = capsys.readouterr().err
    assert status == 2 and "<model>_features" in err and str(tmp_path / "x" / "a.npz") in err
    assert not (tmp_path / "out").exists()


# == usage errors: exit 2, one line, nothing written ==========================================

USAGE_ERRORS = {
    "checkpoint-with-two-models": (["--model", "slowfast,resnet", "--checkpoint", "x.pkl"],
                                   "--checkpoint names one file"),
    "device-and-gpus": (["--device", "cpu", "--gpus", "all"], "give one of them"),
    "device-and-ray": (["--device", "cpu", "--ray"], "give one of them"),
    "gpus-and-ray": (["--gpus", "0", "--ray", "127.0.0.1:6379"], "give one of them"),
    "odd-trailing-options": (["TEST.CHECKPOINT_FILE_PATH"], "KEY VALUE pairs"),
    "trailing-options-then-one-more": (["TEST.CHECKPOINT_FILE_PATH", "a.pkl", "NUM_GPUS"],
                                       "KEY VALUE pairs"),
}


def _usage_argv(tmp_path: Path, extra: list) -> list[str]:
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    model = [] if "--model" in extra else ["--model", "resnet"]
    return ["extract", *model, "--video_path", str(videos), "--output_dir",
            str(tmp_path / "out"), "--no_progress", *extra]


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_exit_2_before_anything_is_written(tmp_path, case, capsys):
    extra, message = USAGE_ERRORS[case]
    assert main(_usage_argv(tmp_path, extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("hero-features: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_exits_2(tmp_path, capsys):
    assert main(_usage_argv(tmp_path, ["--device", "cuda"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("hero-features: error: ") and "no CUDA device" in err, err
    assert not (tmp_path / "out").exists()


def test_the_console_script_exits_2_on_a_usage_error(tmp_path):
    script = Path(sys.executable).with_name("hero-features")
    if not script.exists():
        pytest.skip("the hero-features console script is not installed next to Python")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([str(script), *_usage_argv(tmp_path, ["--device", "cpu", "--gpus",
                                                                "all"])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("hero-features: error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
