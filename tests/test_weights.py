"""Checkpoint look-up, download (progress, sha256, resume) and the `models`/`download` commands.

Downloads come from a small HTTP server on 127.0.0.1 that understands Range requests and can
be told to cut a transfer short or to ignore Range, like real mirrors sometimes do.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

import hero_features.models as registry
import hero_features.weights as weights
from hero_features.cli import main
from hero_features.models import MODEL_IDS, get_spec
from hero_features.models import Checkpoint
from hero_features.state_dicts import is_bn_counter, load_state_dict_strict
from hero_features.weights import (CheckpointMismatch, WeightsError, find_checkpoint,
                                   resolve_checkpoint)

PAYLOAD = bytes(range(256)) * 4099  # ~1 MiB: more than one read block, not a multiple of it
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold a server thread for long

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not server.ignore_range:
            start, status = int(match.group(1)), 206
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        # Cut short after `cut_after` bytes of this response: the connection just closes.
        end = len(body) if server.cut_after is None else min(len(body), start + server.cut_after)
        self.wfile.write(body[start:end])
        if end < len(body):
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files = {"/ckpt.pth": PAYLOAD}
    httpd.requests, httpd.cut_after, httpd.ignore_range = [], None, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every look-up folder moved to tmp: --weights_dir, $HERO_FEATURES_WEIGHTS, /models, cache."""
    dirs = {name: tmp_path / name for name in ("weights_dir", "env", "docker", "xdg")}
    for folder in dirs.values():
        folder.mkdir()
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(dirs["env"]))
    monkeypatch.setattr(weights, "DOCKER_WEIGHTS", dirs["docker"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["xdg"]))
    dirs["cache"] = dirs["xdg"] / "hero-features"
    return dirs


def _ckpt(server, sha256=SHA256, name="ckpt.pth") -> Checkpoint:
    return Checkpoint(name, f"{server.url}/{name}", sha256)


def test_lookup_order(places):
    ckpt = Checkpoint("x.pth", "http://127.0.0.1:9/x.pth")
    order = ["weights_dir", "env", "docker", "cache"]
    assert weights.search_dirs(places["weights_dir"]) == [places[k] for k in order]
    for folder in order:
        places[folder].mkdir(exist_ok=True)
        (places[folder] / "x.pth").write_bytes(folder.encode())
    for folder in order:
        assert find_checkpoint(ckpt, places["weights_dir"]) == places[folder] / "x.pth"
        assert resolve_checkpoint(ckpt, places["weights_dir"]) == places[folder] / "x.pth"
        (places[folder] / "x.pth").unlink()
    assert find_checkpoint(ckpt, places["weights_dir"]) is None


def test_an_explicit_checkpoint_wins_and_must_exist(places, tmp_path):
    ckpt = Checkpoint("x.pth", "http://127.0.0.1:9/x.pth")
    (places["weights_dir"] / "x.pth").write_bytes(b"a")
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"b")
    assert resolve_checkpoint(ckpt, places["weights_dir"], explicit=mine) == mine
    with pytest.raises(WeightsError, match="nope.pth does not exist"):
        resolve_checkpoint(ckpt, places["weights_dir"], explicit=tmp_path / "nope.pth")


def test_without_env_the_lookup_skips_it(places, monkeypatch):
    monkeypatch.delenv(weights.ENV_WEIGHTS)
    assert weights.search_dirs() == [places["docker"], places["cache"]]


def test_download_into_the_cache_with_progress_and_full_hash(server, places, capsys):
    path = resolve_checkpoint(_ckpt(server))
    assert path == places["cache"] / "ckpt.pth"
    assert path.read_bytes() == PAYLOAD
    assert not (places["cache"] / "ckpt.pth.part").exists()
    err = capsys.readouterr().err
    assert "downloading ckpt.pth" in err and "100%" in err
    assert server.requests == [("/ckpt.pth", None)]


def test_download_into_weights_dir_with_a_hash_prefix(server, places):
    path = resolve_checkpoint(_ckpt(server, sha256=SHA256[:8].upper()), places["weights_dir"])
    assert path == places["weights_dir"] / "ckpt.pth" and path.read_bytes() == PAYLOAD
    assert weights.verify(path, _ckpt(server, sha256=SHA256[:8])) is True
    assert weights.verify(path, _ckpt(server, sha256="00000000")) is False
    assert weights.verify(path, _ckpt(server, sha256=None)) is None


def test_a_corrupted_download_is_rejected_and_kept_aside(server, places):
    ckpt = _ckpt(server, sha256="0" * 64)
    with pytest.raises(WeightsError, match="does not match its published sha256") as error:
        resolve_checkpoint(ckpt, places["weights_dir"])
    kept = places["weights_dir"] / "ckpt.pth.corrupt"
    assert str(kept) in str(error.value)
    assert kept.read_bytes() == PAYLOAD
    assert not (places["weights_dir"] / "ckpt.pth").exists()
    assert not (places["weights_dir"] / "ckpt.pth.part").exists()


def test_a_part_file_is_resumed(server, places):
    have = 300_000
    (places["cache"]).mkdir()
    (places["cache"] / "ckpt.pth.part").write_bytes(PAYLOAD[:have])
    path = resolve_checkpoint(_ckpt(server))
    assert server.requests == [("/ckpt.pth", f"bytes={have}-")]
    assert path.read_bytes() == PAYLOAD
    assert not (places["cache"] / "ckpt.pth.part").exists()


@pytest.mark.parametrize("sha256", [SHA256, None])
def test_a_cut_transfer_keeps_the_part_file_and_resumes(server, places, sha256):
    """urllib returns a short body without error when the connection drops; that must not
    pass as the whole file (with no published hash nothing else would catch it)."""
    server.cut_after = 200_000
    with pytest.raises(WeightsError, match="rerun to resume"):
        resolve_checkpoint(_ckpt(server, sha256=sha256), places["weights_dir"])
    part = places["weights_dir"] / "ckpt.pth.part"
    assert part.read_bytes() == PAYLOAD[:200_000]
    assert not (places["weights_dir"] / "ckpt.pth").exists()
    server.cut_after = None
    path = resolve_checkpoint(_ckpt(server, sha256=sha256), places["weights_dir"])
    assert server.requests[-1] == ("/ckpt.pth", "bytes=200000-")
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_a_whole_part_file_is_finished_without_download(server, places):
    (places["weights_dir"] / "ckpt.pth.part").write_bytes(PAYLOAD)
    path = resolve_checkpoint(_ckpt(server), places["weights_dir"])
    assert server.requests == [("/ckpt.pth", f"bytes={len(PAYLOAD)}-")]  # answered 416
    assert path.read_bytes() == PAYLOAD


def test_a_server_ignoring_range_restarts_the_file(server, places):
    server.ignore_range = True
    (places["weights_dir"] / "ckpt.pth.part").write_bytes(b"junk" * 1000)
    path = resolve_checkpoint(_ckpt(server), places["weights_dir"])
    assert path.read_bytes() == PAYLOAD


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_error_names_the_file_url_and_folders(places):
    ckpt = Checkpoint("offline.pth", f"http://127.0.0.1:{_closed_port()}/offline.pth", SHA256)
    with pytest.raises(WeightsError) as error:
        resolve_checkpoint(ckpt, places["weights_dir"])
    message = str(error.value)
    assert "offline.pth" in message and ckpt.url in message
    for folder in ("weights_dir", "env", "docker", "cache"):
        assert str(places[folder]) in message
    assert not (places["weights_dir"] / "offline.pth").exists()
    with pytest.raises(WeightsError, match="downloads are disabled"):
        resolve_checkpoint(ckpt, places["weights_dir"], download=False)


def test_a_missing_file_on_the_server_is_reported(server, places):
    with pytest.raises(WeightsError, match="404"):
        resolve_checkpoint(_ckpt(server, name="gone.pth"), places["weights_dir"])


# --- the commands ---------------------------------------------------------------------------

def _patch_checkpoint(monkeypatch, model, **changes):
    spec = registry.REGISTRY[model]
    monkeypatch.setitem(registry.REGISTRY, model, dataclasses.replace(
        spec, checkpoint=dataclasses.replace(spec.checkpoint, **changes)))


def test_download_command(server, places, monkeypatch, capsys):
    server.files["/resnet152-394f9c45.pth"] = PAYLOAD
    _patch_checkpoint(monkeypatch, "resnet",
                      url=f"{server.url}/resnet152-394f9c45.pth", sha256=SHA256[:8])
    target = places["weights_dir"] / "new"
    assert main(["download", "--model", "resnet", "--weights_dir", str(target)]) == 0
    assert (target / "resnet152-394f9c45.pth").read_bytes() == PAYLOAD
    assert f"resnet: {target / 'resnet152-394f9c45.pth'}" in capsys.readouterr().out
    # already there: found, not fetched again
    assert main(["download", "--model", "resnet", "--weights_dir", str(target)]) == 0
    assert len(server.requests) == 1


def test_download_command_failure_exits_1(server, places, monkeypatch, capsys):
    _patch_checkpoint(monkeypatch, "resnet", url=f"{server.url}/missing.pth")
    assert main(["download", "--model", "resnet", "--weights_dir",
                 str(places["weights_dir"])]) == 1
    err = capsys.readouterr().err
    assert "resnet:" in err and "resnet152-394f9c45.pth" in err and "missing.pth" in err


def test_models_command_lists_every_model_and_its_checkpoint_state(places, monkeypatch,
                                                                   capsys):
    folder = places["weights_dir"]
    (folder / "resnet152-394f9c45.pth").write_bytes(PAYLOAD)
    _patch_checkpoint(monkeypatch, "resnet", sha256=SHA256[:8])
    (folder / "ViT-B-32.pt").write_bytes(b"not the published file")
    (folder / "s3d_howto100m.pth").write_bytes(b"no hash is published for this one")
    assert main(["models", "--weights_dir", str(folder)]) == 1  # ViT-B-32.pt fails its hash
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "HASH MISMATCH" in captured.err and str(folder / "ViT-B-32.pt") in captured.err
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == sorted(MODEL_IDS)
    for name in MODEL_IDS:
        spec = get_spec(name)
        assert rows[name].split()[1] == str(spec.dim)
        assert spec.checkpoint.filename in rows[name]
    assert f"verified {folder / 'resnet152-394f9c45.pth'}" in rows["resnet"]
    assert "HASH MISMATCH" in rows["clip-vit"]
    assert "present (no published hash)" in rows["mil-nce"]
    assert rows["slowfast"].endswith("missing") and rows["clip-rn50x4"].endswith("missing")
    assert (get_spec("clip-vit").dim, get_spec("mil-nce").dim) == (512, 1024)


# == load_state_dict_strict ===================================================================

def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def _checkpoint() -> dict:
    return {k: torch.full_like(v, 7) for k, v in _small_model().state_dict().items()}


def test_strict_load_copies_a_fitting_checkpoint():
    model = _small_model()
    load_state_dict_strict(model, _checkpoint(), what="ckpt.pth")
    assert all((v == 7).all() for v in model.state_dict().values())


@pytest.mark.parametrize("change, problem", [
    (lambda sd: sd.pop("0.bias"), "missing keys: 0.bias"),
    (lambda sd: sd.update({"2.weight": torch.zeros(3)}), "unexpected keys: 2.weight"),
    (lambda sd: sd.update({"0.weight": torch.zeros(3, 3)}),
     "shape mismatch: 0.weight checkpoint (3, 3) != model (3, 2)"),
    (lambda sd: sd.update({"0.weight": [[0.0] * 2] * 3}),
     "shape mismatch: 0.weight checkpoint list != model (3, 2)"),
    (lambda sd: sd.pop("1.num_batches_tracked"), "missing keys: 1.num_batches_tracked"),
], ids=["missing", "unexpected", "misshapen", "not-a-tensor", "not-optional-by-default"])
def test_strict_load_refuses_by_name(change, problem):
    model, state = _small_model(), _checkpoint()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    change(state)
    with pytest.raises(CheckpointMismatch) as error:
        load_state_dict_strict(model, state, what="toy checkpoint /w/ckpt.pth")
    assert str(error.value).startswith("toy checkpoint /w/ckpt.pth does not fit the model: ")
    assert problem in str(error.value)
    # device_runner.load_models passes WeightsError on as is; the model loaders' callers catch
    # ValueError
    assert isinstance(error.value, WeightsError) and isinstance(error.value, ValueError)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_strict_load_lists_every_kind_of_problem_at_once():
    state = _checkpoint()
    del state["0.bias"]
    state["0.weight"] = torch.zeros(1)
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch) as error:
        load_state_dict_strict(_small_model(), state, what="ckpt")
    assert str(error.value) == ("ckpt does not fit the model: missing keys: 0.bias; "
                                "unexpected keys: extra; "
                                "shape mismatch: 0.weight checkpoint (1,) != model (3, 2)")


def test_optional_keys_may_be_absent_and_keep_the_model_value():
    model, state = _small_model(), _checkpoint()
    del state["1.num_batches_tracked"]
    model.state_dict()["1.num_batches_tracked"].fill_(5)
    load_state_dict_strict(model, state, what="ckpt", optional=is_bn_counter)
    assert model.state_dict()["1.num_batches_tracked"] == 5
    assert (model.state_dict()["1.running_mean"] == 7).all()
    # optional only excuses absence: a present optional key must still fit
    state["1.num_batches_tracked"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatch, match="shape mismatch: 1.num_batches_tracked"):
        load_state_dict_strict(model, state, what="ckpt", optional=is_bn_counter)


def test_ignored_prefixes_are_dropped_before_the_check():
    model = _small_model()
    state = {**_checkpoint(), "text.embedding": torch.zeros(10, 4)}
    load_state_dict_strict(model, state, what="ckpt", ignore_prefixes=("text.",))
    assert "text.embedding" not in model.state_dict()


def test_listing_is_capped():
    extra = {f"extra.{i:02d}": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointMismatch) as error:
        load_state_dict_strict(_small_model(), {**_checkpoint(), **extra}, what="ckpt",
                               max_listed=3)
    assert str(error.value).endswith(
        "unexpected keys: extra.00, extra.01, extra.02 ... and 22 more")
    with pytest.raises(CheckpointMismatch) as error:  # the default cap is 20
        load_state_dict_strict(_small_model(), {**_checkpoint(), **extra}, what="ckpt")
    assert "extra.19 ... and 5 more" in str(error.value)
    assert "extra.20" not in str(error.value)


def test_a_download_waits_for_another_process_and_takes_its_file(server, places, capsys,
                                                                monkeypatch):
    """Two runs starting together on one cache must not both append to one .part."""
    import fcntl
    import types

    blocking = threading.Event()

    def flock(fd, operation):
        if operation == fcntl.LOCK_EX:  # the blocking request, after LOCK_NB was refused
            blocking.set()
        return fcntl.flock(fd, operation)

    monkeypatch.setattr(weights, "fcntl", types.SimpleNamespace(
        flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN))
    ckpt = _ckpt(server)
    lock_path = places["weights_dir"] / "ckpt.pth.lock"
    result = {}
    with open(lock_path, "a+b") as other:  # another process holds the download
        fcntl.flock(other, fcntl.LOCK_EX)
        waiter = threading.Thread(
            target=lambda: result.setdefault("path", resolve_checkpoint(
                ckpt, places["weights_dir"])))
        waiter.start()
        # However slowly the thread gets there, it must end up asking to wait for the lock.
        assert blocking.wait(timeout=60), "did not wait for the lock"
        assert waiter.is_alive() and "path" not in result
        (places["weights_dir"] / "ckpt.pth").write_bytes(PAYLOAD)  # the other one finished
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(timeout=120)
    assert result["path"] == places["weights_dir"] / "ckpt.pth"
    assert server.requests == []  # nothing fetched a second time
    assert "waiting for another process downloading ckpt.pth" in capsys.readouterr().err
