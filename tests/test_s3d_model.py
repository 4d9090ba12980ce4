"""MIL-NCE S3D-G: strict, code-free checkpoint loading and the layout conventions."""
from __future__ import annotations

import os
import pickle
import shlex

import pytest
import torch

from hero_features.models import get_spec
from hero_features.models.s3d import S3DG, load_s3d, preprocess_s3d, space_to_depth

SPEC = get_spec("mil-nce")


@pytest.fixture(scope="module")
def s3d_file(synthetic_checkpoints):
    return synthetic_checkpoints / "s3d_howto100m.pth"


@pytest.fixture(scope="module")
def state(s3d_file):
    return torch.load(s3d_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(s3d_file):
    return load_s3d(s3d_file, torch.device("cpu"))


def _save(tmp_path, state_dict):
    path = tmp_path / "s3d_howto100m.pth"
    torch.save(state_dict, path)
    return path


def test_loads_every_vision_key(model, state):
    assert isinstance(model, S3DG) and not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_key_is_named(tmp_path, state):
    broken = dict(state)
    del broken["mixed_4d.gating_b2.fc.bias"]
    with pytest.raises(ValueError, match=r"missing keys: mixed_4d\.gating_b2\.fc\.bias"):
        load_s3d(_save(tmp_path, broken), "cpu")


def _assert_holds(model, state):
    """Every tensor of `state` is in the model, value for value."""
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_num_batches_tracked_may_be_absent(tmp_path, state):
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    counters = state.keys() - old.keys()
    assert counters  # the synthetic checkpoint has them, so this file really lacks some
    model = load_s3d(_save(tmp_path, old), "cpu")
    _assert_holds(model, old)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    # unused in eval; left at a fresh model's value
    assert all(int(loaded[key]) == 0 for key in counters)


def test_unexpected_key_is_named(tmp_path, state):
    broken = {**state, "mixed_5d.conv_b0.conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected keys: mixed_5d\.conv_b0\.conv1\.weight"):
        load_s3d(_save(tmp_path, broken), "cpu")


def test_wrong_shape_is_named(tmp_path, state):
    broken = {**state, "fc.weight": torch.zeros(400, 1024)}
    with pytest.raises(ValueError, match=r"shape mismatch: fc\.weight"):
        load_s3d(_save(tmp_path, broken), "cpu")


def test_text_module_is_ignored(tmp_path, state):
    with_text = {
        **state,
        "text_module.word_embd.weight": torch.zeros(10, 300),
        "text_module.fc1.weight": torch.zeros(2048, 300),
        "text_module.fc2.bias": torch.zeros(512),
    }
    model = load_s3d(_save(tmp_path, with_text), "cpu")
    assert model.state_dict().keys() == state.keys()  # nothing of the text module
    _assert_holds(model, state)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _save(tmp_path, {"conv1.conv1.weight": _Exploit(marker)})
    with pytest.raises(pickle.UnpicklingError):
        load_s3d(path, "cpu")
    assert not marker.exists()


def test_output_is_pooled_mixed_5c(model):
    clip = torch.randint(0, 256, (1, 32, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = model(preprocess_s3d(clip))
    assert out.shape == (1, SPEC.dim) == (1, 1024)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_preprocess_is_divide_by_255_channels_first():
    x = torch.randint(0, 256, (2, 4, 6, 8, 3), dtype=torch.uint8)
    y = preprocess_s3d(x)
    assert y.shape == (2, 3, 4, 6, 8) and y.dtype == torch.float32
    assert torch.equal(y, x.permute(0, 4, 1, 2, 3).float() / 255)


def test_space_to_depth_channel_order():
    c, t, h, w = 3, 4, 6, 8
    tt, hh, ww, cc = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                    torch.arange(c), indexing="ij")
    code = (tt * 1000 + hh * 100 + ww * 10 + cc).permute(3, 0, 1, 2)[None]  # (1, C, T, H, W)
    out = space_to_depth(code)
    assert out.shape == (1, 8 * c, t // 2, h // 2, w // 2)
    for dt in range(2):
        for dh in range(2):
            for dw in range(2):
                for ci in range(c):
                    channel = ((dt * 2 + dh) * 2 + dw) * c + ci
                    for i in range(t // 2):
                        for j in range(h // 2):
                            for k in range(w // 2):
                                want = (2 * i + dt) * 1000 + (2 * j + dh) * 100 \
                                    + (2 * k + dw) * 10 + ci
                                assert out[0, channel, i, j, k] == want


def test_spec():
    assert (SPEC.name, SPEC.dim, SPEC.unit, SPEC.size, SPEC.crop) == ("mil-nce", 1024, "clip",
                                                                      224, True)
    assert SPEC.checkpoint.filename == "s3d_howto100m.pth"
    assert SPEC.build.resolve() is load_s3d and SPEC.preprocess.resolve() is preprocess_s3d
