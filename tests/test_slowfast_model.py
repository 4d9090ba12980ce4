"""SlowFast R50: Caffe2/PySlowFast checkpoint loading, the restricted unpickler, shapes.

Feature values are checked against the reference goldens by the parity tests; here the
model is run once on a small batch for its shape.
"""
from __future__ import annotations

import os
import pickle
import re
import subprocess

import numpy as np
import pytest
import torch

from hero_features.models import get_spec
from hero_features.models.slowfast import (
    SLOWFAST_INDICES, SlowFastR50, caffe2_key, convert_caffe2_blobs, load_slowfast,
    preprocess_slowfast)
from hero_features.safe_pickle import UnsafePickleError, load_caffe2_pickle


@pytest.fixture(scope="session")
def slowfast_pkl(synthetic_checkpoints):
    return synthetic_checkpoints / "SLOWFAST_8x8_R50.pkl"


@pytest.fixture(scope="session")
def blobs(slowfast_pkl):
    return load_caffe2_pickle(slowfast_pkl)["blobs"]


@pytest.fixture(scope="session")
def model(slowfast_pkl):
    return load_slowfast(slowfast_pkl, "cpu")


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # protocol of the synthetic Caffe2 file
    return path


def test_slow_pathway_indices():
    assert list(SLOWFAST_INDICES) == [0, 4, 8, 13, 17, 22, 26, 30]


def test_spec():
    SPEC = get_spec("slowfast")
    assert (SPEC.name, SPEC.dim, SPEC.unit, SPEC.size, SPEC.crop) == ("slowfast", 2304, "clip", 224, True)
    assert SPEC.checkpoint.filename == "SLOWFAST_8x8_R50.pkl"
    assert SPEC.build.resolve() is load_slowfast
    assert SPEC.preprocess.resolve() is preprocess_slowfast


@pytest.mark.parametrize("blob, key", [
    ("conv1_w", "s1.pathway0_stem.conv.weight"),
    ("res_conv1_bn_s", "s1.pathway0_stem.bn.weight"),
    ("t_conv1_w", "s1.pathway1_stem.conv.weight"),
    ("t_res_conv1_bn_riv", "s1.pathway1_stem.bn.running_var"),
    ("t_pool1_subsample_w", "s1_fuse.conv_f2s.weight"),
    ("t_pool1_subsample_bn_rm", "s1_fuse.bn.running_mean"),
    ("res2_0_branch1_w", "s2.pathway0_res0.branch1.weight"),
    ("res2_0_branch1_bn_b", "s2.pathway0_res0.branch1_bn.bias"),
    ("t_res5_0_branch1_bn_s", "s5.pathway1_res0.branch1_bn.weight"),
    ("res4_5_branch2a_w", "s4.pathway0_res5.branch2.a.weight"),
    ("res2_0_branch2a_bn_rm", "s2.pathway0_res0.branch2.a_bn.running_mean"),
    ("t_res3_2_branch2b_bn_riv", "s3.pathway1_res2.branch2.b_bn.running_var"),
    ("res5_2_branch2c_bn_s", "s5.pathway0_res2.branch2.c_bn.weight"),
    ("t_res4_5_branch2c_bn_subsample_w", "s4_fuse.conv_f2s.weight"),
    ("t_res2_2_branch2c_bn_subsample_bn_b", "s2_fuse.bn.bias"),
    ("pred_w", "head.projection.weight"),
    ("pred_b", "head.projection.bias"),
    ("lr", None),
    ("model_iter", None),
    ("conv1_w_momentum", None),
    ("nonlocal_conv3_1_theta_w", None),
])
def test_caffe2_names(blob, key):
    assert caffe2_key(blob) == key


def test_synthetic_checkpoint_fills_every_key(blobs):
    state = convert_caffe2_blobs(blobs)
    expected = SlowFastR50().state_dict()
    required = {k for k in expected if not k.endswith("num_batches_tracked")}
    assert set(state) == required  # nothing missing, nothing unexpected
    assert all(state[k].shape == expected[k].shape for k in state)


def test_loaded_values_equal_blobs(model, blobs):
    state = model.state_dict()
    assert torch.equal(state["s1.pathway1_stem.conv.weight"], torch.from_numpy(blobs["t_conv1_w"]))
    assert torch.equal(state["s3_fuse.bn.running_var"],
                       torch.from_numpy(blobs["t_res3_3_branch2c_bn_subsample_bn_riv"]))
    assert not model.training


def test_removed_blob_is_named(tmp_path, blobs):
    tampered = {k: v for k, v in blobs.items() if k != "res3_1_branch2b_bn_riv"}
    path = _write_pickle(tmp_path / "SLOWFAST_8x8_R50.pkl", {"blobs": tampered})
    with pytest.raises(ValueError,
                       match=r"missing keys: .*s3\.pathway0_res1\.branch2\.b_bn\.running_var"):
        load_slowfast(path, "cpu")


@pytest.mark.parametrize("renamed", ["res3_1_branch2b_bn_riv_x", "res3_1_branch2d_w"])
def test_unknown_blob_is_named(blobs, renamed):
    tampered = dict(blobs)
    tampered[renamed] = tampered.pop("res3_1_branch2b_bn_riv")
    with pytest.raises(ValueError, match=renamed):
        convert_caffe2_blobs(tampered)


def test_blob_outside_the_architecture_is_named(tmp_path, blobs):
    # well-formed Caffe2 name of a block R50 does not have (res2 has blocks 0..2)
    tampered = {**blobs, "res2_3_branch2a_w": blobs["res2_2_branch2a_w"]}
    path = _write_pickle(tmp_path / "SLOWFAST_8x8_R50.pkl", {"blobs": tampered})
    with pytest.raises(ValueError,
                       match=r"unexpected keys: .*s2\.pathway0_res3\.branch2\.a\.weight"):
        load_slowfast(path, "cpu")


def test_shape_mismatch_is_named(tmp_path, blobs):
    state = convert_caffe2_blobs(blobs)
    state["head.projection.weight"] = state["head.projection.weight"][:, :2048].clone()
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": state}, path)
    with pytest.raises(ValueError, match=r"shape mismatch: head\.projection\.weight "
                                         r"checkpoint \(400, 2048\) != model \(400, 2304\)"):
        load_slowfast(path, "cpu")


def test_pyth_model_state_round_trip(tmp_path, model):
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": model.state_dict(), "epoch": 196}, path)
    loaded = load_slowfast(path, "cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_forward_shape(model):
    torch.manual_seed(0)
    clip = torch.randint(0, 256, (2, 32, 224, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = model(preprocess_slowfast(clip))
    assert out.shape == (2, 2304) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_forward_rejects_wrong_frame_count(model):
    with pytest.raises(ValueError, match="32"):
        model(torch.zeros(1, 3, 16, 64, 64))


def test_preprocess_values():
    x = torch.tensor([0, 255, 115], dtype=torch.uint8).view(1, 1, 1, 1, 3).expand(1, 32, 2, 2, 3)
    y = preprocess_slowfast(x)
    assert y.shape == (1, 3, 32, 2, 2) and y.dtype == torch.float32
    expected = (torch.tensor([0.0, 255.0, 115.0]) / 255 - 0.45) / (0.225 + 1e-8)
    torch.testing.assert_close(y[0, :, 0, 0, 0], expected)


class _Exploit:
    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("make, protocol, refused", [
    (lambda m: _Exploit(os.system, (f"touch {m}",)), 5, f"{os.system.__module__}.system"),
    (lambda m: _Exploit(eval, (f"open({str(m)!r}, 'w')",)), 5, "builtins.eval"),
    (lambda m: _Exploit(subprocess.Popen, (["touch", str(m)],)), 5, "subprocess.Popen"),
    # protocol 2 writes Python 2 module names, which must be refused just the same
    (lambda m: _Exploit(eval, (f"open({str(m)!r}, 'w')",)), 2, "__builtin__.eval"),
])
def test_malicious_pickle_is_refused(tmp_path, make, protocol, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": make(marker)}}, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=re.escape(f"'{refused}'")):
        load_caffe2_pickle(path)
    with pytest.raises(UnsafePickleError):
        load_slowfast(path, "cpu")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_of_any_protocol_load(tmp_path, protocol):
    obj = {"blobs": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(1.5),
                     "i": np.array([7], dtype=np.int64)}, "meta": [1, (2.0, "x")]}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = load_caffe2_pickle(path)
    assert np.array_equal(got["blobs"]["a"], obj["blobs"]["a"])
    assert got["blobs"]["s"] == 1.5 and got["meta"] == [1, (2.0, "x")]


def test_python2_caffe2_pickle_loads(tmp_path):
    # What Python 2 / numpy 1 (the real Caffe2 file) writes: numpy.core module names and
    # the array bytes as a py2 str, which only encoding="latin1" turns back into bytes
    def py2_str(b):
        return b"U" + bytes([len(b)]) + b
    values = np.array([1.0, 2.0, 3.0], np.float32)
    data = (b"\x80\x02}" + py2_str(b"blobs") + b"}" + py2_str(b"conv1_w")
            + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b")
            + b"\x87R(K\x01K\x03\x85cnumpy\ndtype\n" + py2_str(b"f4") + b"K\x00K\x01\x87R"
            + b"(K\x03" + py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            + b"\x89" + py2_str(values.tobytes()) + b"tbss.")
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    assert np.array_equal(load_caffe2_pickle(path)["blobs"]["conv1_w"], values)
