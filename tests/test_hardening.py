"""Hardening: a corpus of bad inputs, SIGKILL / SIGINT mid-run, hung and crashing decoders,
hostile playlists and checkpoints, and an output folder that cannot be written.

The results are tabulated in docs/reliability.md. Everything uses the resnet model (one frame
per clip_len) and tiny videos: the cost here is the model on the CPU and process start-up.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import pickle
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import bad_corpus
import faults
from bad_corpus import CASES, FAILURE, FEATURES, WARNING
from hero_features.config import DecodeSettings, InputGroup
from hero_features.manifest import feature_path, find_videos, is_complete
from hero_features.messages import Info
from hero_features.producer import decode_video_units, frame_rate
from hero_features.video import DecodeSpec, decode, output_dims, probe
from hero_features.workers import DecodePool
from helpers import failures, load
from test_video import needs_ffmpeg, reference_cli_bytes

RESNET = [InputGroup(("resnet",), "frame", 224, False)]
SETTINGS = DecodeSettings(clip_len=Fraction(3, 2))
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc, inotify, prctl")


def _env(**extra) -> dict:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _cli(out: Path, *args, weights: Path, threads: int = 1) -> list[str]:
    return ["extract", "--model", "resnet", "--output_dir", str(out), "--device", "cpu",
            "--no_progress", "--weights_dir", str(weights), "--num_decoding_thread",
            str(threads), *map(str, args)]


def _live_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies excluded: in a container PID 1
    may never reap an orphan)."""
    live = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry.name))
    return live


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (live := _live_in_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in live:  # never leave strays behind, whatever the assertion says
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return live


# == the bad-input corpus =====================================================================

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    made = bad_corpus.build(root)
    return root, {case.name: case for case in made}


@pytest.fixture(scope="module")
def corpus_run(corpus, synthetic_checkpoints, tmp_path_factory):
    """ONE `python -m hero_features extract --video_path CORPUS` over every case. As root it
    runs without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so the mode-000 file really is
    unreadable to it (and to its decode workers)."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("corpus_out")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hero_features",
         *_cli(out, "--video_path", root, "--batch_size", "32", weights=synthetic_checkpoints,
               threads=2)],
        capture_output=True, text=True, env=_env(), timeout=600,
        preexec_fn=bad_corpus.drop_file_capabilities if os.geteuid() == 0 else None)
    logged: dict[str, list[dict]] = {}
    for entry in failures(out):
        logged.setdefault(entry["video_path"], []).append(entry)
    return {"status": done.returncode, "stderr": done.stderr, "out": out, "logged": logged,
            "seconds": time.monotonic() - started}


def test_corpus_run_ends_with_exit_1_and_the_good_video_extracted(corpus_run, corpus):
    root, _ = corpus
    assert corpus_run["status"] == 1, corpus_run["stderr"][-3000:]
    assert "Traceback" not in corpus_run["stderr"], corpus_run["stderr"][-3000:]
    good = feature_path(root / "good.mp4", root, corpus_run["out"], "resnet")
    assert load(good).shape == (2, 2048)
    assert re.search(r"videos: \d+ done, 0 skipped .*, \d+ failed, of \d+", corpus_run["stderr"])
    assert not list(corpus_run["out"].rglob("*.tmp")), "temporary files left behind"
    # every line is one whole JSON object on one line, whatever the file name was
    lines = (corpus_run["out"] / "failed.jsonl").read_bytes().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)


@pytest.mark.parametrize("name", [c.name for c in CASES],
                         ids=[ascii(c.name).strip("'") for c in CASES])
def test_corpus_case(name, corpus, corpus_run):
    root, made = corpus
    if name not in made:
        pytest.skip(f"cannot be made here (needs {bad_corpus.CASES_BY_NAME[name].requires})")
    case = made[name]
    video = root / case.name
    output = feature_path(video, root, corpus_run["out"], "resnet")
    lines = corpus_run["logged"].get(str(video), [])

    if not case.regular:
        # Not a regular file: listed by the folder scan all the same (so it is logged, not
        # skipped), and refused by the decoder before FFmpeg could block on it.
        assert video in find_videos(root)
        assert case.expect == FAILURE

    if case.expect == FAILURE:
        assert not output.exists(), f"a failed video left {output}"
        assert len(lines) == 1, lines
        entry = lines[0]
        assert entry["model"] == "resnet" and entry["severity"] == "error"
        assert entry["stage"] == case.stage, entry
        assert re.search(case.match, entry["error"], re.I), entry["error"]
        assert "\n" not in entry["error"]
        return

    features = load(output)
    assert features.dtype == np.float16 and features.shape == (case.rows, 2048)
    assert np.isfinite(features.astype(np.float32)).all()
    if case.same_as:
        twin = feature_path(root / case.same_as, root, corpus_run["out"], "resnet")
        assert np.array_equal(features, load(twin))
    if case.expect == FEATURES:
        assert lines == []
    else:
        assert case.expect == WARNING
        assert len(lines) == 1, lines
        entry = lines[0]
        assert entry["severity"] == "warning" and entry["stage"] == case.stage, entry
        assert re.search(case.match, entry["error"], re.I), entry["error"]


# The cases that give features, decoded by us and by the ffmpeg CLI (the reference's decoder).
DECODED = [c for c in CASES if c.expect != FAILURE]


def _decoded_case(name: str, corpus):
    root, made = corpus
    if name not in made:
        pytest.skip(f"cannot be made here (needs {bad_corpus.CASES_BY_NAME[name].requires})")
    return made[name], root / name


def _branch_specs(info) -> dict:
    """The specs the models decode a corpus video with: resnet's frame rate (the short-video
    rule included) and the clip models' 30 fps with the centre crop."""
    return {"resnet": DecodeSpec(frame_rate("frame", SETTINGS, info), 224, False),
            "clip": DecodeSpec(frame_rate("clip", SETTINGS, info), 224, True)}


@needs_ffmpeg
@pytest.mark.parametrize("name", [c.name for c in DECODED],
                         ids=[ascii(c.name).strip("'") for c in DECODED])
def test_corpus_rows_are_what_the_ffmpeg_cli_keeps(name, corpus):
    case, video = _decoded_case(name, corpus)
    info = probe(video)
    spec = _branch_specs(info)["resnet"]
    raw = reference_cli_bytes(video, spec, info.width, info.height)
    width, height = output_dims(info.width, info.height, spec.size)
    frame_bytes = width * height * 3
    assert len(raw) % frame_bytes == 0
    assert len(raw) // frame_bytes == case.rows


@needs_ffmpeg
@pytest.mark.parametrize("name", [pytest.param(c.name, id=ascii(c.name).strip("'"))
                                  for c in DECODED])
def test_corpus_frames_byte_identical_to_the_ffmpeg_cli(name, corpus):
    """Other codecs (VP9, AV1, MPEG-2, MJPEG, H.264 High 10), containers, VFR, rotation and
    damage: what the models see is what the reference's ffmpeg command gave, byte for byte."""
    _, video = _decoded_case(name, corpus)
    info = probe(video)
    for branch, spec in _branch_specs(info).items():
        ours = b"".join(frame.tobytes() for _, frame in decode(video, [spec], info))
        cli = reference_cli_bytes(video, spec, info.width, info.height)
        assert len(ours) == len(cli), (branch, len(ours), len(cli))
        assert ours == cli, branch


# == hostile inputs ===========================================================================

class Inotify:
    """Records every open or read of one file, by any process (Linux inotify via libc)."""

    IN_ACCESS, IN_OPEN, IN_NONBLOCK = 0x1, 0x20, 0o4000

    def __init__(self, path: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0:
            pytest.skip("inotify is not available")
        if self.libc.inotify_add_watch(self.fd, os.fsencode(path),
                                       self.IN_OPEN | self.IN_ACCESS) < 0:
            pytest.skip("cannot watch the file with inotify")

    def events(self) -> int:
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(data):  # struct inotify_event: wd, mask, cookie, len, name
                name_len = int.from_bytes(data[offset + 12:offset + 16], sys.byteorder)
                offset += 16 + name_len
                count += 1

    def close(self) -> None:
        os.close(self.fd)


def test_playlists_and_lists_cannot_make_ffmpeg_open_anything_else(tmp_path):
    secret = bad_corpus.good_mp4(tmp_path / "secret.mp4")
    server, port = bad_corpus.listening_socket()
    server.setblocking(False)
    hostile = {
        "relative.m3u8": bad_corpus.hls_playlist("secret.mp4"),
        "absolute.m3u8": bad_corpus.hls_playlist(str(secret)),
        "file_url.m3u8": bad_corpus.hls_playlist(f"file:{secret}"),
        "renamed_playlist.mp4": bad_corpus.hls_playlist("secret.mp4"),
        "http.m3u8": bad_corpus.hls_playlist(f"http://127.0.0.1:{port}/secret.mp4"),
        "http_renamed.mp4": bad_corpus.hls_playlist(f"http://127.0.0.1:{port}/secret.mp4"),
        "list.ffconcat": bad_corpus.ffconcat_list("secret.mp4"),
        "list_renamed.mp4": bad_corpus.ffconcat_list(str(secret)),
        "http_list.ffconcat": bad_corpus.ffconcat_list(f"http://127.0.0.1:{port}/x.mp4"),
    }
    watch = Inotify(secret)
    try:
        for name, content in hostile.items():
            (tmp_path / name).write_bytes(content)
            messages = list(decode_video_units(0, str(tmp_path / name), RESNET, SETTINGS))
            kinds = [m.kind for m in messages]
            assert kinds == ["error"], (name, messages)
            assert messages[0].stage == "open", (name, messages)
            assert re.search(r"refus|cannot open", messages[0].reason), (name, messages)
        assert watch.events() == 0, "FFmpeg opened the file a playlist named"
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing connected to the "segment server"
        with open(secret, "rb") as f:  # the watch itself works
            f.read(1)
        assert watch.events() > 0
    finally:
        watch.close()
        server.close()


class _Exploit:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _torch_file(path: Path, marker: Path, key: str) -> Path:
    import torch

    torch.save({key: _Exploit(marker)}, path)
    return path


def _caffe2_file(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": _Exploit(marker)}}, protocol=2))
    return path


def _torchscript_looking_zip(path: Path, marker: Path) -> Path:
    """The layout torch.jit.save writes (so load_clip takes the TorchScript path), with a
    code-running pickle as data.pkl and constants.pkl."""
    evil = pickle.dumps(_Exploit(marker), protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/version", "3\n")
        z.writestr("model/data.pkl", evil)
        z.writestr("model/constants.pkl", evil)
        z.writestr("model/code/__torch__.py", "")
    return path


def _load(kind: str, path: Path):
    if kind == "slowfast":
        from hero_features.models.slowfast import load_slowfast
        return load_slowfast(path, "cpu")
    if kind == "resnet":
        from hero_features.models.resnet import load_resnet152
        return load_resnet152(path, "cpu")
    if kind == "s3d":
        from hero_features.models.s3d import load_s3d
        return load_s3d(path, "cpu")
    from hero_features.models.clip import load_clip
    return load_clip(path, "cpu", "ViT-B/32")


CHECKPOINTS = {
    "caffe2-pkl": ("slowfast", "SLOWFAST_8x8_R50.pkl", _caffe2_file),
    "slowfast-pyth": ("slowfast", "SLOWFAST_8x8_R50.pyth",
                      lambda p, m: _torch_file(p, m, "model_state")),
    "resnet-pth": ("resnet", "resnet152-394f9c45.pth",
                   lambda p, m: _torch_file(p, m, "conv1.weight")),
    "s3d-pth": ("s3d", "s3d_howto100m.pth", lambda p, m: _torch_file(p, m, "conv1.conv1.weight")),
    "clip-state-dict": ("clip", "ViT-B-32.pt", lambda p, m: _torch_file(p, m, "visual.proj")),
    "clip-torchscript-zip": ("clip", "ViT-B-32.pt", _torchscript_looking_zip),
}


@pytest.mark.parametrize("fmt", sorted(CHECKPOINTS))
def test_checkpoint_pickles_never_run_code(tmp_path, fmt):
    loader, filename, make = CHECKPOINTS[fmt]
    marker = tmp_path / "pwned"
    path = make(tmp_path / filename, marker)
    with pytest.raises(Exception) as refused:
        _load(loader, path)
    assert not marker.exists(), f"{fmt}: the pickle ran code"
    assert not isinstance(refused.value, (AttributeError, TypeError, NameError)), refused.value


@pytest.mark.parametrize("model, fmt", [("slowfast", "caffe2-pkl"), ("mil-nce", "s3d-pth"),
                                        ("resnet", "resnet-pth")])
def test_a_malicious_checkpoint_on_the_command_line_is_one_clear_error(tmp_path, small_video,
                                                                       model, fmt, capsys):
    from hero_features.cli import main

    _, filename, make = CHECKPOINTS[fmt]
    marker = tmp_path / "pwned"
    path = make(tmp_path / filename, marker)
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(small_video, videos / "a.mp4")
    status = main(["extract", "--model", model, "--checkpoint", str(path), "--video_path",
                   str(videos), "--output_dir", str(tmp_path / "out"), "--device", "cpu",
                   "--no_progress", "--num_decoding_thread", "0"])
    err = capsys.readouterr().err
    assert not marker.exists()
    assert status == 2 and "Traceback" not in err and str(path) in err, err
    # torch's own message suggests weights_only=False, the very thing that runs the code
    assert "will likely succeed" not in err, err


# == hung and crashing decoders ===============================================================
# Module-level, so the spawned workers can import them by name.

def hang_on_hang(video_id, path, groups, settings, active):
    if "hang" in Path(path).name:
        yield Info(video_id, None)
        read_end, _ = os.pipe()
        os.read(read_end, 1)  # blocks in the kernel: nobody ever writes
    yield from decode_video_units(video_id, path, groups, settings, active)


def die_on_request(video_id, path, groups, settings, active):
    name = Path(path).name
    if "exit" in name or "abort" in name:
        yield Info(video_id, None)
        if "exit" in name:
            os._exit(3)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from the abort
        os.abort()
    yield from decode_video_units(video_id, path, groups, settings, active)


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    """2 s: one resnet row at clip_len 1.5."""
    return bad_corpus.encode(tmp_path_factory.mktemp("small") / "v.mp4", 50,
                             container_format="mp4")


def _run_pool(paths, decode_fn, timeout):
    pool = DecodePool(2, RESNET, SETTINGS, video_timeout=timeout, decode_fn=decode_fn)
    seen: dict[int, list] = {i: [] for i in range(len(paths))}
    started = time.monotonic()
    for message in pool.messages((i, str(p), (0,)) for i, p in enumerate(paths)):
        seen[message.video_id].append(message)
    return seen, pool.replaced, time.monotonic() - started


def _assert_fine(messages):
    kinds = [m.kind for m in messages]
    assert "error" not in kinds and kinds[-2:] == ["end", "done"], kinds
    assert sum(m.units.shape[0] for m in messages if m.kind == "units") == 1


def test_a_decoder_hung_in_native_code_is_killed_and_the_rest_go_on(tmp_path, small_video):
    paths = [shutil.copy(small_video, tmp_path / n) for n in
             ("a.mp4", "hang.mp4", "b.mp4", "c.mp4")]
    seen, replaced, seconds = _run_pool(paths, hang_on_hang, timeout=2)
    hung = seen[1]
    errors = [m for m in hung if m.kind == "error"]
    assert len(errors) == 1 and hung[-1].kind == "done"
    assert errors[0].stage == "decode" and "video_timeout" in errors[0].reason
    assert "killed" in errors[0].reason
    for i in (0, 2, 3):
        _assert_fine(seen[i])
    assert replaced == 1
    assert seconds < 60


def test_a_decoder_that_dies_is_reported_and_the_rest_go_on(tmp_path, small_video):
    paths = [shutil.copy(small_video, tmp_path / n) for n in
             ("a.mp4", "exit.mp4", "b.mp4", "abort.mp4", "c.mp4")]
    seen, replaced, _ = _run_pool(paths, die_on_request, timeout=30)
    for index, why in ((1, "exit code 3"), (3, "SIGABRT")):
        errors = [m for m in seen[index] if m.kind == "error"]
        assert len(errors) == 1 and seen[index][-1].kind == "done", seen[index]
        assert errors[0].stage == "decode"
        assert "worker died" in errors[0].reason and why in errors[0].reason, errors[0].reason
    for i in (0, 2, 4):
        _assert_fine(seen[i])
    assert replaced == 2


# == SIGKILL and SIGINT mid-run ===============================================================

# Runs the CLI with os.fsync stalled for feature temporaries: the test kills the run while a
# whole .npz sits under its temporary name, the one moment a careless writer would expose.
_STALL_IN_WRITE = """
import os, sys, time
from pathlib import Path
flag, real_fsync = Path(sys.argv[1]), os.fsync
def fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if ".npz." in name and name.endswith(".tmp"):
        flag.write_text(name)
        time.sleep(3600)
    real_fsync(fd)
os.fsync = fsync
from hero_features.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Runs the CLI with its decode workers running faults.gated_decode: the video named in
# $HERO_TEST_GATE never finishes decoding, so the run cannot end before it is interrupted.
_GATED_DECODE = """
import functools, sys
sys.path.insert(0, sys.argv[1])
import faults
import hero_features.pipeline as pipeline
pipeline.DecodePool = functools.partial(pipeline.DecodePool, decode_fn=faults.gated_decode)
from hero_features.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def crash_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crash_videos")
    for i in range(4):  # 2 s each (one row); other sizes, so a mix-up would show
        bad_corpus.encode(folder / f"v{i}.mp4", 50, container_format="mp4",
                          width=128 + 16 * i, height=96)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(crash_videos, synthetic_checkpoints, tmp_path_factory, cached_models):
    from hero_features.cli import main

    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(_cli(out, "--video_path", crash_videos, "--batch_size", "1",
                     weights=synthetic_checkpoints, threads=0)) == 0
    return {p.relative_to(out): load(p) for p in out.rglob("*.npz")}


def _start(argv, *, wrapper=None, flag=None, env=None):
    command = [sys.executable, "-m", "hero_features", *argv] if wrapper is None else \
        [sys.executable, "-c", wrapper, str(flag), *argv]
    return subprocess.Popen(command, env=_env(**(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _complete_outputs(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.npz") if is_complete(p, 2048)]


def _check_state(out: Path, reference: dict) -> int:
    """Whatever a stopped run left: every final-named file is whole and right, temporaries
    are never taken for outputs. Returns the number of finished outputs."""
    finals = list(out.rglob("*.npz"))
    for path in finals:
        assert is_complete(path, 2048), f"half-written file under a final name: {path}"
        assert np.array_equal(load(path), reference[path.relative_to(out)])
    for tmp in out.rglob("*.tmp"):
        assert tmp.name.startswith(".") and not is_complete(tmp, 2048)
    return len(finals)


def _wait_outputs(out: Path, count: int, process, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while len(_complete_outputs(out)) < count and process.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def test_sigkill_and_sigint_at_random_points_then_rerun(crash_videos, uninterrupted,
                                                        synthetic_checkpoints, tmp_path):
    out = tmp_path / "out"
    argv = _cli(out, "--video_path", crash_videos, "--batch_size", "1",
                weights=synthetic_checkpoints)
    total = len(uninterrupted)
    rng = random.Random(20240611)

    # 1. Ctrl-C in a terminal: SIGINT to the whole process group, after some outputs. The
    # decode of the third video never ends, so the run cannot finish before the signal;
    # the signal goes once that decode has begun and the first two outputs are written.
    gated = sorted(p.name for p in crash_videos.glob("*.mp4"))[2]
    gate = tmp_path / "gate"
    run = _start(argv, wrapper=_GATED_DECODE, flag=TESTS,
                 env={faults.GATE_ENV: f"{gated}:{gate}"})
    deadline = time.monotonic() + 300
    while not (gate.exists() and len(_complete_outputs(out)) == 2):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert re.search(r"videos: 2 done", err) and "interrupted" in err, err[-2000:]
    assert not _wait_group_gone(run.pid), "processes left behind after Ctrl-C"
    assert failures(out) == [], "an interrupt is not a failed video"
    finished = _check_state(out, uninterrupted)
    assert finished == 2 < total

    # 2. SIGKILL while a complete .npz sits under its temporary name, not yet renamed.
    flag = tmp_path / "stalled"
    run = _start(argv, wrapper=_STALL_IN_WRITE, flag=flag)
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=60)
    assert not _wait_group_gone(run.pid), "decode workers outlived a killed run"
    stalled = Path(flag.read_text())
    assert stalled.exists() and stalled.name.endswith(".tmp")
    with np.load(stalled) as whole:  # every byte is there...
        assert whole["features"].shape[1] == 2048
    final = stalled.parent / stalled.name[1:].split(".npz.")[0]
    final = final.with_name(final.name + ".npz")
    assert not final.exists() and not is_complete(stalled, 2048)  # ...yet it is not done
    finished = _check_state(out, uninterrupted)

    # 3. SIGKILL at random moments (start-up, decoding, the model, writing).
    for _trial in range(2):
        run = _start(argv)
        _wait_outputs(out, min(total, finished + rng.randrange(0, 2)), run)
        time.sleep(rng.uniform(0, 1.5))
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
        run.communicate(timeout=60)
        assert not _wait_group_gone(run.pid), "decode workers outlived a killed run"
        finished = _check_state(out, uninterrupted)

    # 4. The rerun finishes the rest, skips exactly what was complete, changes nothing.
    done = subprocess.run([sys.executable, "-m", "hero_features", *argv], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{total - finished} done, {finished} skipped" in done.stderr, done.stderr[-2000:]
    assert _check_state(out, uninterrupted) == total
    assert failures(out) == []


# == output that cannot be written ============================================================

def test_a_killed_and_resumed_run_equals_a_clean_one_in_other_batches(
        crash_videos, synthetic_checkpoints, cached_models, tmp_path):
    """clip-vit (whose matmuls give other bits at other batch shapes), two rows a video,
    batches of 3. The clean run batches [v0 v0 v1] [v1 v2 v2] [v3 v3 +padding]; the killed
    run writes v0 only (v2's decode never ends, so [v1 v2 v2] never fills) and the resumed
    run batches [v1 v1 v2] [v2 v3 v3]: other neighbours, other places, other remainders, the
    same bytes."""
    from hero_features.cli import main

    def argv(out: Path) -> list[str]:
        return ["extract", "--model", "clip-vit", "--video_path", str(crash_videos),
                "--output_dir", str(out), "--device", "cpu", "--no_progress",
                "--weights_dir", str(synthetic_checkpoints), "--clip_len", "1",
                "--batch_size", "3", "--num_decoding_thread", "1"]

    def outputs(out: Path) -> dict:
        return {p.relative_to(out): load(p) for p in out.rglob("*.npz") if is_complete(p, 512)}

    clean = tmp_path / "clean"
    assert main(argv(clean)) == 0
    expected = outputs(clean)
    assert len(expected) == 4 and all(len(rows) == 2 for rows in expected.values())

    out = tmp_path / "out"
    gated = sorted(p.name for p in crash_videos.glob("*.mp4"))[2]
    gate = tmp_path / "gate"
    run = _start(argv(out), wrapper=_GATED_DECODE, flag=TESTS,
                 env={faults.GATE_ENV: f"{gated}:{gate}"})
    deadline = time.monotonic() + 300
    while not (gate.exists() and outputs(out)):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=60)
    assert not _wait_group_gone(run.pid), "decode workers outlived a killed run"
    first = outputs(out)
    assert [p.stem for p in first] == [sorted(p.stem for p in crash_videos.glob("*.mp4"))[0]]

    assert main(argv(out)) == 0
    resumed = outputs(out)
    assert resumed.keys() == expected.keys()
    for path, rows in expected.items():
        assert np.array_equal(resumed[path], rows), path


def test_output_folder_below_a_file_is_one_clear_error(tmp_path, small_video,
                                                       synthetic_checkpoints, cached_models,
                                                       capsys):
    from hero_features.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(small_video, videos / "a.mp4")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    status = main(_cli(blocker / "out", "--video_path", videos, weights=synthetic_checkpoints,
                       threads=0))
    err = capsys.readouterr().err
    assert status == 2  # the run could not start
    assert "Traceback" not in err and "Not a directory" in err, err
    assert blocker.read_text() == "not a folder"


def test_disk_full_while_writing_stops_the_run_cleanly(tmp_path, small_video, monkeypatch,
                                                       synthetic_checkpoints, cached_models,
                                                       capsys):
    from hero_features.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        shutil.copy(small_video, videos / name)
    real_savez, calls = np.savez, []

    def savez(file, **arrays):
        calls.append(file)
        if len(calls) == 1:
            return real_savez(file, **arrays)
        file.write(b"PK\x03\x04 half of a zip")  # the disk fills up part-way
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez)
    out = tmp_path / "out"
    status = main(_cli(out, "--video_path", videos, "--batch_size", "1",
                       weights=synthetic_checkpoints, threads=0))
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert status == 1  # stopped; what was written before is complete
    assert "Traceback" not in err and "No space left on device" in err, err
    finals = list(out.rglob("*.npz"))
    assert len(finals) == 1 and is_complete(finals[0], 2048)  # the one written before
    assert not list(out.rglob("*.tmp")), "a partial temporary was left"
    logged = failures(out)
    assert logged and all(e["stage"] == "write" for e in logged)
