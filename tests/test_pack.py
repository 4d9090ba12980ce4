"""hero_features.pack writes the video db that HERO's VideoFeatLmdb reads.

The reads below copy HERO's data/data.py (VideoFeatLmdb.__getitem__ / get_dump) and the
expected values copy scripts/convert_videodb.py (load_npz, dumps_msgpack, the clip_interval
loop), so a change of format on either side shows up here.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest

lmdb = pytest.importorskip("lmdb")
msgpack = pytest.importorskip("msgpack")
msgpack_numpy = pytest.importorskip("msgpack_numpy")

from hero_features.cli import main  # noqa: E402
from hero_features.pack import (  # noqa: E402
    PackError, db_name, pack, rows_per_clip, run_from_args,
)

RESNET, SLOWFAST = 2048, 2304


@pytest.fixture
def hero_msgpack(monkeypatch):
    """msgpack as HERO's modules leave it: msgpack_numpy.patch() at import, undone afterwards."""
    for name in ("Packer", "Unpacker", "load", "loads", "dump", "dumps", "pack", "packb",
                 "unpack", "unpackb"):
        monkeypatch.setattr(msgpack, name, getattr(msgpack, name))
    msgpack_numpy.patch()
    return msgpack


def _feat(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float16)


def _save(out: Path, model: str, vid: str, features: np.ndarray) -> Path:
    path = out / f"{model}_features" / f"{vid}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=features)
    return path


@pytest.fixture
def features(tmp_path):
    """Three videos as the brief has them, plus one longer video for clip splitting."""
    out = tmp_path / "out"
    data = {
        # in a sub-folder; slowfast has one row more, so the pair is cut to 7 rows
        "cooking/alpha": (_feat(7, RESNET, 1), _feat(8, SLOWFAST, 2)),
        "long": (_feat(11, RESNET, 3), _feat(11, SLOWFAST, 4)),
    }
    for vid, (resnet, slowfast) in data.items():
        _save(out, "resnet", vid, resnet)
        _save(out, "slowfast", vid, slowfast)
    _save(out, "resnet", "beta", _feat(3, RESNET, 5))  # no slowfast file
    _save(out, "resnet", "gamma", _feat(4, RESNET, 6))
    bad = out / "slowfast_features" / "gamma.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    return out, data


def _open(db: Path):
    # VideoFeatLmdb.__init__: readonly, no create, buffers=True
    env = lmdb.open(str(db), readonly=True, create=False, max_readers=4096 * 8,
                    readahead=False)
    return env, env.begin(buffers=True)


def _hero_value(resnet: np.ndarray, slowfast: np.ndarray, nframes: int) -> dict:
    """load_npz in convert_videodb.py: fp16 -> fp32, cut to nframes, resnet first."""
    resnet = resnet.astype(np.float32)[:nframes, :]
    slowfast = slowfast.astype(np.float32)[:nframes, :]
    return {"features": np.concatenate((resnet, slowfast), axis=1)}


def test_db_reads_back_as_hero_reads_it(features, tmp_path, hero_msgpack, capsys):
    out, data = features
    db_dir = tmp_path / "video_db"
    report = pack(out, db_dir)

    assert report.db_path == db_dir / "resnet_slowfast_1.5"
    assert (report.db_path / "data.mdb").is_file()
    env, txn = _open(report.db_path)
    try:
        keys = sorted(bytes(k) for k, _ in txn.cursor())
        assert keys == [b"cooking/alpha", b"long"]
        for vid, (resnet, slowfast) in data.items():
            nframes = min(len(resnet), len(slowfast))
            dump = txn.get(vid.encode("utf-8"))
            # byte for byte what dumps_msgpack(features) wrote in HERO's converter
            expected = hero_msgpack.dumps(_hero_value(resnet, slowfast, nframes),
                                          use_bin_type=True)
            assert bytes(dump) == expected
            img_dump = hero_msgpack.loads(dump, raw=False)
            feats = img_dump["features"]
            assert feats.shape == (nframes, RESNET + SLOWFAST)
            assert feats.dtype == np.float32
            np.testing.assert_array_equal(feats[:, :RESNET], resnet[:nframes].astype(np.float32))
            np.testing.assert_array_equal(feats[:, RESNET:], slowfast[:nframes].astype(np.float32))
    finally:
        env.close()

    frame_len = json.loads((db_dir / "id2frame_len.json").read_text())
    assert frame_len == {"cooking/alpha": 7, "long": 11}
    assert json.loads((db_dir / "id2nframe.json").read_text()) == frame_len
    assert report.entries == frame_len
    assert report.videos == 2
    assert report.truncated == [("cooking/alpha", 7, 8)]

    assert [p.video_id for p in report.missing] == ["beta"]
    assert "slowfast" in report.missing[0].reason
    assert [p.video_id for p in report.corrupt] == ["gamma"]
    assert "gamma.npz" in report.corrupt[0].reason
    assert not report.ok
    assert json.loads((db_dir / "corrupted.json").read_text()) == ["beta", "gamma"]
    err = capsys.readouterr().err
    assert "missing  beta" in err and "corrupt  gamma" in err
    lines = report.lines()
    assert any(line.startswith("missing  beta") for line in lines)
    assert any(line.startswith("corrupt  gamma") for line in lines)


def test_clip_interval_splits_like_howto100m(features, tmp_path, hero_msgpack):
    out, data = features
    db_dir = tmp_path / "db"
    # HERO: int(clip_interval / frame_length) rows per clip -> int(4 / 1.5) = 2
    report = pack(out, db_dir, clip_interval=4, log=lambda line: None)
    resnet, slowfast = data["long"]
    whole = _hero_value(resnet, slowfast, 11)["features"]
    expected = {f"long.{k}": whole[2 * k:2 * k + 2] for k in range(6)}
    assert [len(v) for v in expected.values()] == [2, 2, 2, 2, 2, 1]
    alpha = _hero_value(*data["cooking/alpha"], 7)["features"]
    expected.update({f"cooking/alpha.{k}": alpha[2 * k:2 * k + 2] for k in range(4)})

    assert report.entries == {k: len(v) for k, v in expected.items()}
    assert json.loads((db_dir / "id2frame_len.json").read_text()) == report.entries
    env, txn = _open(report.db_path)
    try:
        assert sorted(bytes(k).decode() for k, _ in txn.cursor()) == sorted(expected)
        assert txn.get(b"long") is None
        for key, value in expected.items():
            feats = hero_msgpack.loads(txn.get(key.encode()), raw=False)["features"]
            np.testing.assert_array_equal(feats, value)
    finally:
        env.close()


def test_clip_rows_follow_hero_arithmetic():
    assert rows_per_clip(60, "3/2") == 40
    assert rows_per_clip(60, 2) == 30
    assert rows_per_clip(60, 1.5) == 40
    assert rows_per_clip(4, 1.5) == 2
    with pytest.raises(PackError):
        rows_per_clip(1, 1.5)
    assert db_name("3/2") == "resnet_slowfast_1.5"
    assert db_name(2) == "resnet_slowfast_2.0"
    assert db_name(2, compress=True) == "resnet_slowfast_2.0_compressed"


def test_compressed_db_and_half(features, tmp_path):
    out, data = features
    report = pack(out, tmp_path / "db", clip_len=2, compress=True, half=True,
                  log=lambda line: None)
    assert report.db_path.name == "resnet_slowfast_2.0_compressed"
    env, txn = _open(report.db_path)
    try:
        # VideoFeatLmdb.__getitem__, compress=True branch
        with io.BytesIO(txn.get(b"cooking/alpha")) as reader:
            img_dump = np.load(reader, allow_pickle=True)
            feats = img_dump["features"]
    finally:
        env.close()
    resnet, slowfast = data["cooking/alpha"]
    assert feats.dtype == np.float16
    np.testing.assert_array_equal(feats, np.concatenate((resnet[:7], slowfast[:7]), axis=1))


def test_wrong_width_and_empty_are_corrupt(tmp_path):
    out = tmp_path / "out"
    _save(out, "resnet", "wide", _feat(3, 1024, 1))
    _save(out, "slowfast", "wide", _feat(3, SLOWFAST, 2))
    _save(out, "resnet", "empty", np.zeros((0, RESNET), np.float16))
    _save(out, "slowfast", "empty", np.zeros((0, SLOWFAST), np.float16))
    _save(out, "slowfast", "noresnet", _feat(2, SLOWFAST, 3))
    np.savez(out / "resnet_features" / "nokey.npz", other=_feat(2, RESNET, 4))
    _save(out, "slowfast", "nokey", _feat(2, SLOWFAST, 5))
    report = pack(out, tmp_path / "db", log=lambda line: None)
    corrupt = {p.video_id: p.reason for p in report.corrupt}
    assert set(corrupt) == {"wide", "empty", "nokey"}
    assert "(3, 1024)" in corrupt["wide"]
    assert "no feature rows" in corrupt["empty"]
    assert "'features'" in corrupt["nokey"]
    assert [p.video_id for p in report.missing] == ["noresnet"]
    assert "resnet" in report.missing[0].reason
    assert report.entries == {}
    assert json.loads((tmp_path / "db" / "id2frame_len.json").read_text()) == {}


def test_repack_replaces_the_old_db(features, tmp_path):
    out, _ = features
    db_dir = tmp_path / "db"
    pack(out, db_dir, clip_interval=4, log=lambda line: None)
    (out / "resnet_features" / "beta.npz").unlink()
    (out / "resnet_features" / "gamma.npz").unlink()
    (out / "slowfast_features" / "gamma.npz").unlink()
    report = pack(out, db_dir, log=lambda line: None)
    assert report.ok
    env, txn = _open(report.db_path)
    try:
        assert sorted(bytes(k) for k, _ in txn.cursor()) == [b"cooking/alpha", b"long"]
    finally:
        env.close()
    assert not (db_dir / "corrupted.json").exists()
    assert [p.name for p in db_dir.iterdir() if p.name.startswith(".")] == []


def test_no_feature_folders_is_an_error(tmp_path):
    with pytest.raises(PackError):
        pack(tmp_path, tmp_path / "db")


def test_run_from_args_exit_codes(features, tmp_path, capsys):
    out, _ = features
    args = argparse.Namespace(output_dir=out, db_dir=None, clip_interval=None,
                              clip_len="3/2", compress=False, fp16=False)
    assert run_from_args(args) == 1  # beta and gamma left out
    assert (out / "video_db" / "resnet_slowfast_1.5" / "data.mdb").is_file()
    assert "packed 2 videos" in capsys.readouterr().out
    # what cannot run is an error of the family, exit status 2 through the command line
    assert main(["pack", "--output_dir", str(tmp_path / "nothing"), "--db_dir",
                 str(tmp_path / "db")]) == 2
    assert "error" in capsys.readouterr().err
