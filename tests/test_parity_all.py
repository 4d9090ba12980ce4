"""Every pipeline against the reference goldens, all models in ONE decode pass per video; the
Python API gives each video the bytes that run wrote."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import hero_features
import hero_features.producer as producer
from helpers import MAX_REL_ERR, assert_parity, assert_parity_of, extract, load, rel_err

from conftest import VIDEOS

ALL = ("slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4")


@pytest.fixture(scope="module")
def counted_decodes(monkeypatch_module):
    """How many times each video went through the decoder (decode workers off)."""
    counts: dict[str, int] = {}
    real = producer.decode_container

    def counting(container, *args, **kwargs):
        counts[container.name] = counts.get(container.name, 0) + 1
        return real(container, *args, **kwargs)

    monkeypatch_module.setattr(producer, "decode_container", counting)
    return counts


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


# Batches have one fixed shape (the last one of each frame size padded), so a small batch
# keeps the padding's cost down: resnet's four frame sizes each end in a partial batch.
BATCH = "4"


@pytest.fixture(scope="module")
def all_models_15(tmp_path_factory, synthetic_checkpoints, counted_decodes, cached_models):
    out = tmp_path_factory.mktemp("all_1.5")
    status = extract("--model", ",".join(ALL), "--video_path", VIDEOS, "--output_dir", out,
                     "--clip_len", "3/2", "--num_decoding_thread", "0", "--batch_size", BATCH,
                     weights=synthetic_checkpoints)
    return status, out, dict(counted_decodes)


@pytest.mark.parametrize("model", ALL)
def test_parity_clip_len_1_5_all_models_one_call(all_models_15, model):
    status, out, _ = all_models_15
    assert status == 0
    assert_parity(f"{model}_1.5", out / f"{model}_features")


def test_each_video_decoded_once_for_five_models(all_models_15):
    _, _, counts = all_models_15
    assert sorted(counts) == sorted(str(p) for p in VIDEOS.glob("*.mp4"))
    assert set(counts.values()) == {1}


def test_slowfast_parity_clip_len_2(tmp_path, synthetic_checkpoints):
    status = extract("--model", "slowfast", "--video_path", VIDEOS, "--output_dir", tmp_path,
                     "--clip_len", "2", "--num_decoding_thread", "2", "--batch_size", "3",
                     weights=synthetic_checkpoints)
    assert status == 0
    assert_parity("slowfast_2", tmp_path / "slowfast_features")


def test_combined_run_equals_separate_runs(tmp_path, synthetic_checkpoints, all_models_15):
    """resnet + clip-vit share one decode branch (the crop is cut from the uncropped frame);
    the result must equal single-model runs, and batch size must not matter beyond float
    noise."""
    video_dir = tmp_path / "v"
    video_dir.mkdir()
    shutil.copy(VIDEOS / "carphone_pristine.mp4", video_dir)
    for model in ("resnet", "clip-vit"):
        assert extract("--model", model, "--video_path", video_dir, "--output_dir",
                       tmp_path / model, "--clip_len", "1.5", "--num_decoding_thread", "0",
                       "--batch_size", "1", weights=synthetic_checkpoints) == 0
        separate_file = tmp_path / model / f"{model}_features" / "carphone_pristine.npz"
        separate = load(separate_file)
        combined = load(all_models_15[1] / f"{model}_features" / "carphone_pristine.npz")
        assert separate.shape == combined.shape
        assert_parity_of(f"{model}_1.5", {"carphone_pristine": separate_file})
        if model == "resnet":  # ResNet-152's CPU convolutions give the same bits at batch 1
            assert np.array_equal(separate, combined)
        else:  # CLIP's matmuls do not (measured: 5 of 1536 values one float16 step apart)
            assert rel_err(separate, combined) <= MAX_REL_ERR


def test_the_python_api_gives_each_video_the_bytes_of_the_cli(all_models_15, sample_videos,
                                                           synthetic_checkpoints):
    """Each sample video alone through hero_features.extract() equals what the CLI wrote for
    it in one run over all the samples, where its rows shared batches with other videos' at
    other places and the batches ended elsewhere: the fixed batch shape makes a row's bytes
    independent of its neighbours, for all five models. The API scales on the device
    (scale_on="device", here the CPU running the device code) and the CLI ran the CPU graph:
    the same features, as --scale-on promises (one run checks both, to keep the suite short)."""
    status, out, _ = all_models_15
    assert status == 0
    for video in sample_videos:
        features = hero_features.extract(video, models=list(ALL), clip_len="3/2",
                                         device="cpu", weights_dir=synthetic_checkpoints,
                                         batch_size=int(BATCH), scale_on="device")
        assert list(features) == list(ALL)
        for model in ALL:
            written = load(out / f"{model}_features" / f"{video.stem}.npz")
            assert features[model].dtype == np.float16
            assert np.array_equal(features[model], written), (video.name, model)
