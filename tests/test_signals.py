"""Issue 13, cases 5 and 7: SIGTERM and SIGHUP stop a run like Ctrl-C (exit 128 + signal,
summary, rerun hint, nothing left in /dev/shm or running), for the single-device pipeline
and the --gpus supervisor; --video_timeout measures decoder progress (a heartbeat per
decoded frame) and says what stalled, with decode workers and inline.

The runs are real subprocesses on tiny videos with resnet; the moment of the signal is set
by an event (an output written, a write held on a FIFO), never by a sleep.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

import bad_corpus
from hero_features.config import DecodeSettings, InputGroup
from hero_features.messages import End, Info, Units
from hero_features.transport import ARENA_PREFIX
from hero_features.workers import DecodePool, Heartbeat, inline_messages
from helpers import failures

RESNET = [InputGroup(("resnet",), "frame", 224, False)]
SETTINGS = DecodeSettings(clip_len=Fraction(3, 2))
SRC = Path(__file__).resolve().parent.parent / "src"
VIDEOS = 4

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc, /dev/shm, FIFOs")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _argv(videos: Path, out: Path, weights: Path, *extra) -> list[str]:
    return ["extract", "--model", "resnet", "--video_path", str(videos), "--output_dir",
            str(out), "--device", "cpu", "--no_progress", "--weights_dir", str(weights),
            "--batch_size", "1", "--num_decoding_thread", "1", *map(str, extra)]


# Runs the CLI so that the second batch (the second video: one row each, --batch_size 1)
# waits, inside the model step, until the first output is on disk (FLAG) and then until a
# signal arrives: the test signals a run that is certainly mid-way, with a batch in flight.
_HOLD_SECOND_BATCH = """
import signal, sys, time
from pathlib import Path
import hero_features.device_runner as device_runner
import hero_features.writer as writer
flag = Path(sys.argv[1])
real_write, real_forward, batches = writer.write_features, device_runner.device_features, []
def write_features(path, features, record=None):
    real_write(path, features, record)
    flag.write_text(str(path))
def device_features(*args, **kwargs):
    batches.append(1)
    if len(batches) == 2:
        while not flag.exists():
            time.sleep(0.01)
        while True:
            signal.pause()
    return real_forward(*args, **kwargs)
writer.write_features, device_runner.device_features = write_features, device_features
from hero_features.cli import main
sys.exit(main(sys.argv[2:]))
"""

# --gpus with CPU stand-ins for the devices (the supervisor path is the same).
_CPU_GPUS = """
import sys
import hero_features.multigpu as multigpu
multigpu.resolve_gpus = lambda text, available=None: ["cpu"] * int(text)
from hero_features.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("signal_videos")
    for i in range(VIDEOS):  # 2 s each (one row), other sizes so a mix-up would show
        bad_corpus.encode(folder / f"v{i}.mp4", 50, container_format="mp4",
                          width=64 + 16 * i, height=48)
    return folder


@pytest.fixture(scope="module")
def clean(videos, synthetic_checkpoints, tmp_path_factory) -> dict:
    """The bytes of every output of an uninterrupted run (a subprocess, as the others)."""
    out = tmp_path_factory.mktemp("clean")
    done = subprocess.run([sys.executable, "-m", "hero_features",
                           *_argv(videos, out, synthetic_checkpoints)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.npz")}
    assert len(outputs) == VIDEOS
    return outputs


def _outputs(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*.npz")}


def _arenas() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(ARENA_PREFIX)}


def _arenas_of(pid: int) -> set[str]:
    return {name for name in _arenas() if name.startswith(f"{ARENA_PREFIX}{pid}-")}


def _live_in_session(sid: int) -> list[int]:
    """Processes of a session that still run (zombies excluded)."""
    live = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            live.append(int(entry.name))
    return live


def _wait_session_gone(sid: int, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (live := _live_in_session(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in live:  # never leave strays behind, whatever the assertion says
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return live


def _held_run(tmp_path: Path, argv: list[str]):
    flag = tmp_path / "first_written"
    run = subprocess.Popen([sys.executable, "-c", _HOLD_SECOND_BATCH, str(flag), *argv],
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "no output was written"
        time.sleep(0.05)
    return run


def _assert_stopped_cleanly(run, err: str, status: int, name: str) -> None:
    assert run.returncode == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"videos: 1 done, 0 skipped (already complete), 0 failed, of {VIDEOS}" in err, \
        err[-2000:]
    assert f"hero-features: interrupted by {name}; rerun the same command to finish" in err
    assert "resource_tracker" not in err and "leaked" not in err, err[-2000:]
    assert not _arenas_of(run.pid), "shared memory left in /dev/shm"
    assert not _wait_session_gone(run.pid), "processes left behind"


def test_sigterm_mid_run_then_rerun(videos, clean, synthetic_checkpoints, tmp_path):
    out = tmp_path / "out"
    argv = _argv(videos, out, synthetic_checkpoints)
    run = _held_run(tmp_path, argv)
    assert _arenas_of(run.pid), "the decode worker's arena should exist while it runs"
    os.kill(run.pid, signal.SIGTERM)  # to the main process only, as docker stop does
    _, err = run.communicate(timeout=120)
    _assert_stopped_cleanly(run, err, 143, "SIGTERM")
    assert failures(out) == [], "a stop is not a failed video"
    partial = _outputs(out)
    assert len(partial) == 1, err[-2000:]  # the batch in flight was dropped
    assert all(clean[name] == data for name, data in partial.items())

    done = subprocess.run([sys.executable, "-m", "hero_features", *argv], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{VIDEOS - len(partial)} done, {len(partial)} skipped" in done.stderr
    assert _outputs(out) == clean  # byte for byte
    assert failures(out) == []


def test_sighup_to_the_process_group(videos, clean, synthetic_checkpoints, tmp_path):
    """A closed terminal: SIGHUP reaches every process of the group, decode workers and
    multiprocessing's resource tracker included."""
    out = tmp_path / "out"
    run = _held_run(tmp_path, _argv(videos, out, synthetic_checkpoints))
    os.killpg(run.pid, signal.SIGHUP)
    _, err = run.communicate(timeout=120)
    _assert_stopped_cleanly(run, err, 129, "SIGHUP")
    assert failures(out) == [], "the decode worker must not die of the SIGHUP"
    partial = _outputs(out)
    assert len(partial) == 1 and all(clean[name] == data for name, data in partial.items())


def test_sigterm_to_the_gpus_supervisor(videos, clean, synthetic_checkpoints, tmp_path):
    out = tmp_path / "out"
    before = _arenas()
    run = subprocess.Popen([sys.executable, "-c", _CPU_GPUS,
                            *[arg for arg in _argv(videos, out, synthetic_checkpoints,
                                                   "--gpus", "1") if arg not in ("--device",
                                                                                 "cpu")]],
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.rglob("*.npz")):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "no output was written"
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGTERM)  # the supervisor forwards the stop to its workers
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "hero-features: interrupted by SIGTERM; rerun the same command to finish" in err
    assert "resource_tracker" not in err and "leaked" not in err, err[-2000:]
    assert not _wait_session_gone(run.pid), "a worker or decode worker was left running"
    assert _arenas() <= before, "shared memory left in /dev/shm"
    assert failures(out) == []
    partial = _outputs(out)
    assert partial and all(clean[name] == data for name, data in partial.items())


# == 7: the stall watch goes by decoder progress =============================================

def test_heartbeat_says_what_stalled():
    beat = Heartbeat()
    assert beat.stall(time.monotonic() + 100, 5) is None  # idle: nothing to watch
    beat.begin()
    start = beat.cells[Heartbeat.LAST]
    assert beat.stall(start + 4, 5) is None
    assert beat.stall(start + 6, 5) == "FFmpeg did not finish opening and probing the file in 5 s"
    beat.decoding()
    at = beat.cells[Heartbeat.LAST]
    assert beat.stall(at + 6, 5) == "the decoder gave no frame in the 5 s after the file was opened"
    for _ in range(3):
        beat.frame()
    at = beat.cells[Heartbeat.LAST]
    assert beat.stall(at + 6, 5) == ("the decoder stopped: no frame decoded for 5 s after "
                                     "frame 3")
    with beat.waiting():  # handing a message to a busy main process is not a stall
        assert beat.stall(at + 60, 5) is None
    beat.end()
    assert beat.stall(time.monotonic() + 60, 5) is None


# Stand-in decoders (module level: decode workers import them by name).

def slow_to_first_message(video_id, path, groups, settings, active, on_frame=None):
    """Many decoded frames before the first kept one (an 8K video sampled at 2/3 fps): the
    first message comes after 3 s, frames every 50 ms."""
    yield Info(video_id, None)
    for _ in range(60):
        time.sleep(0.05)
        on_frame()
    import numpy as np
    yield Units(video_id, 0, np.zeros((1, 8, 8, 3), np.uint8))
    yield End(video_id, 2.0)


def hangs(video_id, path, groups, settings, active, on_frame=None):
    """Hangs in the kernel opening the file ('open' in its name) or after three frames."""
    if "open" not in Path(path).name:
        yield Info(video_id, None)
        for _ in range(3):
            on_frame()
    read_end, _ = os.pipe()
    os.read(read_end, 1)  # nobody ever writes
    yield End(video_id, 0.0)


def test_a_decoder_busy_between_messages_is_not_a_stall():
    jobs = [(0, "slow.mp4", (0,))]
    pooled = list(DecodePool(1, RESNET, SETTINGS, video_timeout=1.5,
                             decode_fn=slow_to_first_message).messages(iter(jobs)))
    inline = list(inline_messages(iter(jobs), RESNET, SETTINGS, video_timeout=1.5,
                                  decode_fn=slow_to_first_message))
    for messages in (pooled, inline):
        assert [m.kind for m in messages] == ["info", "units", "end", "done"], messages


def test_a_stalled_worker_is_named_by_what_stalled():
    jobs = [(0, "open.mp4", (0,)), (1, "frames.mp4", (0,))]
    messages = list(DecodePool(2, RESNET, SETTINGS, video_timeout=2,
                               decode_fn=hangs).messages(iter(jobs)))
    errors = {m.video_id: m.reason for m in messages if m.kind == "error"}
    assert errors == {
        0: "FFmpeg did not finish opening and probing the file in 2 s (--video_timeout); the "
           "decode worker was killed",
        1: "the decoder stopped: no frame decoded for 2 s after frame 3 (--video_timeout); the "
           "decode worker was killed"}, messages


def test_inline_decoding_has_the_same_stall_timeout():
    release = threading.Event()

    def hangs_inline(video_id, path, groups, settings, active, on_frame=None):
        yield Info(video_id, None)
        on_frame()
        release.wait()  # stuck (in the real case: in native code, which nothing can stop)
        on_frame()  # abandoned: this raises, so the thread ends once released
        yield End(video_id, 0.0)

    def fine(video_id, path, groups, settings, active, on_frame=None):
        if "hang" in path:
            yield from hangs_inline(video_id, path, groups, settings, active, on_frame)
            return
        yield Info(video_id, None)
        on_frame()
        yield End(video_id, 1.0)

    jobs = [(0, "hang.mp4", (0,)), (1, "next.mp4", (0,))]
    try:
        messages = list(inline_messages(iter(jobs), RESNET, SETTINGS, video_timeout=1,
                                        decode_fn=fine))
    finally:
        release.set()
    assert [m.kind for m in messages] == ["info", "error", "done", "info", "end", "done"]
    assert messages[1][1:] == ("decode", "the decoder stopped: no frame decoded for 1 s after "
                                         "frame 1 (--video_timeout); the video was abandoned "
                                         "and its decode thread left behind")
