"""Issue 13: never overwrite what isn't ours, never keep a stale output, one-line errors.

Cases 1-4 and 6-12 of docs/reliability.md ("Attacks and careless runs"); the signal cases (5)
and the stall watch (7) are in tests/test_signals.py. Everything runs through the command
line (`main([...])`) with the resnet model and tiny videos; runs that must stop before any
decoding prove it by making decoding and model loading fail the test if they happen.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import bad_corpus
from hero_features import __version__
from hero_features.cli import build_parser, main
from hero_features.atomic import NAME_MAX, temporary_sibling
from hero_features.manifest import ManifestError, find_videos, is_complete, read_csv
from hero_features.outputs import make_record, read_record, write_features
from hero_features.config import RunConfig
from hero_features.config import DecodeSettings, InputGroup
from hero_features.producer import decode_video_units
from hero_features.video import _DEMUXERS_THAT_OPEN_OTHER_FILES, _FORMAT_WHITELIST
from hero_features.workers import DecodePool, inline_messages
from helpers import failures, load

RESNET = [InputGroup(("resnet",), "frame", 224, False)]
SRC = Path(__file__).resolve().parent.parent / "src"
README = Path(__file__).resolve().parent.parent / "README.md"
RELIABILITY = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="FIFOs, /proc, prctl")


# == fixtures and helpers =====================================================================

@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """2 s, 64x48: one resnet row at clip_len 3/2, two at clip_len 1."""
    return bad_corpus.encode(tmp_path_factory.mktemp("clip") / "v.mp4", 50,
                             container_format="mp4", width=64, height=48)


@pytest.fixture(scope="module")
def clip4s(tmp_path_factory) -> Path:
    """4 s: two resnet rows at clip_len 2, four at clip_len 1."""
    return bad_corpus.encode(tmp_path_factory.mktemp("clip4") / "v.mp4", 100,
                             container_format="mp4", width=64, height=48)


@pytest.fixture
def nothing_decoded(monkeypatch):
    """Decoding or loading a model fails the test (runs use --num_decoding_thread 0, so any
    decode would happen in this process)."""
    import hero_features.device_runner as device_runner
    import hero_features.producer as producer

    def forbidden(*args, **kwargs):
        raise AssertionError("decoding or model loading started")

    monkeypatch.setattr(producer, "open_video", forbidden)
    monkeypatch.setattr(device_runner, "load_models", forbidden)


def run(capsys, out: Path, *args, weights: Path, threads: int = 0) -> tuple[int, str]:
    # Batches have one fixed shape, padded: on these one- or two-row videos a batch of one is
    # the cheapest (a test that needs another passes --batch_size, which comes later and wins).
    status = main(["extract", "--model", "resnet", "--device", "cpu", "--no_progress",
                   "--weights_dir", str(weights), "--num_decoding_thread", str(threads),
                   "--output_dir", str(out), "--batch_size", "1", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return status, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hero-features: error:")]


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def write_csv_text(path: Path, rows) -> Path:
    path.write_text("video_path,feature_path\n" + "".join(f"{v},{f}\n" for v, f in rows))
    return path


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


# == 1-3: what a csv may write ================================================================

def test_csv_attack_is_refused_before_anything_is_decoded(tmp_path, clip, nothing_decoded,
                                                          synthetic_checkpoints, capsys):
    data = tmp_path / "d"
    data.mkdir()
    victim, other = shutil.copy(clip, data / "victim.mp4"), shutil.copy(clip, data / "o.mp4")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    out = tmp_path / "out"
    duplicate = out / "resnet_features" / "dup.npz"
    table = write_csv_text(tmp_path / "attack.csv", [
        (victim, victim),  # line 2: its own video
        (other, etc / "passwd"),  # line 3: an existing file that is not ours
        (victim, duplicate),  # lines 4 and 5: one output for two videos
        (other, duplicate),
        (other, victim),  # line 6: another row's video
    ])
    before = snapshot(tmp_path)
    for extra in ([], ["--allow_outside_output_dir"]):
        status, err = run(capsys, out, "--csv", table, *extra, weights=synthetic_checkpoints)
        assert status == 2, err
        assert len(err.strip().splitlines()) == 1 and len(error_lines(err)) == 1, err
        assert "nothing was decoded" in err
        assert f"line 2: the feature path {victim} is its own video" in err
        assert f"line 3: the feature path {etc / 'passwd'} exists and is not a features file" \
            in err
        assert f"lines 4 and 5 write the same feature path {duplicate}" in err
        assert f"line 6: the feature path {victim} is the video of line 2" in err
    assert snapshot(tmp_path) == before, "an existing file was changed or one was added"
    assert not out.exists() or not list(out.rglob("*.npz"))


def test_a_hard_link_to_a_video_is_the_video(tmp_path, clip, nothing_decoded,
                                             synthetic_checkpoints, capsys):
    video = shutil.copy(clip, tmp_path / "v.mp4")
    out = tmp_path / "out"
    (out / "resnet_features").mkdir(parents=True)
    os.link(video, out / "resnet_features" / "v.npz")
    table = write_csv_text(tmp_path / "l.csv", [(video, out / "resnet_features" / "v.npz")])
    status, err = run(capsys, out, "--csv", table, weights=synthetic_checkpoints)
    assert status == 2 and "is its own video" in err, err
    assert Path(video).read_bytes() == clip.read_bytes()


@pytest.mark.parametrize("make, why", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: os.mkfifo(p), "is not a regular file"),
    (lambda p: np.savez(p, features=np.zeros((1, 2048), np.float16), other=np.zeros(1)),
     "is not a features file"),
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "is not a features file"),
])
def test_an_existing_thing_at_a_feature_path_is_never_replaced(tmp_path, clip, make, why,
                                                                nothing_decoded,
                                                                synthetic_checkpoints, capsys):
    out = tmp_path / "out"
    target = out / "resnet_features" / "v.npz"
    target.parent.mkdir(parents=True)
    make(target)
    table = write_csv_text(tmp_path / "c.csv", [(clip, target)])
    status, err = run(capsys, out, "--csv", table, "--overwrite", weights=synthetic_checkpoints)
    assert status == 2 and "line 2" in err and why in err, err


def test_what_counts_as_a_features_file(tmp_path):
    from hero_features.manifest import is_features_file

    whole = tmp_path / "whole.npz"
    write_features(whole, np.zeros((3, 2048), np.float16), {"model": "resnet"})
    np.savez(tmp_path / "reference.npz", features=np.zeros((3, 2048), np.float16))
    (tmp_path / "cut.npz").write_bytes(whole.read_bytes()[:100])  # a crashed copy: redone
    np.savez(tmp_path / "two.npz", features=np.zeros(2), labels=np.zeros(2))
    # Cut short, a file is judged by its first member: this one cannot be told from a
    # features file cut short (and is broken either way).
    (tmp_path / "two_cut.npz").write_bytes((tmp_path / "two.npz").read_bytes()[:-30])
    np.savez(tmp_path / "other.npz", weights=np.zeros(2))
    (tmp_path / "other_cut.npz").write_bytes((tmp_path / "other.npz").read_bytes()[:100])
    (tmp_path / "text").write_text("root:x:0:0\n")
    (tmp_path / "empty").write_bytes(b"")
    assert [name for name in sorted(os.listdir(tmp_path)) if is_features_file(tmp_path / name)] \
        == ["cut.npz", "reference.npz", "two_cut.npz", "whole.npz"]


def test_feature_paths_outside_output_dir_need_the_opt_in(tmp_path, clip, cached_models,
                                                          synthetic_checkpoints, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    table = write_csv_text(tmp_path / "c.csv", [(clip, elsewhere / "sub" / "feat"),
                                                (clip, out / "resnet_features" / ".." / ".." /
                                                 "escaped.npz")])
    status, err = run(capsys, out, "--csv", table, weights=synthetic_checkpoints)
    assert status == 2, err
    assert "2 feature path(s) lie outside --output_dir" in err and "(line 2, 3)" in err
    assert "--allow_outside_output_dir" in err
    assert not elsewhere.exists() and not (tmp_path / "escaped.npz").exists()

    # With the opt-in; `.npz` appended where np.savez appended it.
    status, err = run(capsys, out, "--csv", table, "--allow_outside_output_dir",
                      weights=synthetic_checkpoints)
    assert status == 0, err
    assert load(elsewhere / "sub" / "feat.npz").shape == (1, 2048)
    assert not (elsewhere / "sub" / "feat").exists()
    assert load(tmp_path / "escaped.npz").shape == (1, 2048)
    # A rerun finds them done: the `.npz` name is the one checked.
    status, err = run(capsys, out, "--csv", table, "--allow_outside_output_dir",
                      weights=synthetic_checkpoints)
    assert status == 0 and "0 done, 2 skipped" in err, err


def test_the_opt_in_is_documented():
    extract = build_parser()._subparsers._group_actions[0].choices["extract"]
    assert "--allow_outside_output_dir" in extract.format_help()
    assert "--allow_outside_output_dir" in README.read_text()


def test_a_feature_path_ending_in_a_slash_is_refused(tmp_path, clip, nothing_decoded,
                                                      synthetic_checkpoints, capsys):
    out = tmp_path / "out"
    table = tmp_path / "c.csv"
    table.write_text(f"video_path,feature_path\n{clip},{out}/resnet_features/folder/\n")
    status, err = run(capsys, out, "--csv", table, weights=synthetic_checkpoints)
    assert status == 2 and "line 2" in err and "ends with '/'" in err, err
    assert not (out / "resnet_features").exists()


# == 4: what made an output ===================================================================

def test_write_features_is_byte_identical_for_the_same_input(tmp_path, monkeypatch):
    features = np.arange(8 * 2048, dtype=np.float16).reshape(8, 2048)
    record = {"model": "resnet", "clip_len": "3/2"}
    write_features(tmp_path / "a.npz", features, record)
    later = time.time() + 86400 * 3
    monkeypatch.setattr(time, "time", lambda: later)  # zip entries carry the write time
    write_features(tmp_path / "b.npz", features, record)
    monkeypatch.undo()
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert np.array_equal(load(tmp_path / "a.npz"), features)  # only `features` in np.load
    assert read_record(tmp_path / "a.npz") == record
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert archive.testzip() is None and archive.namelist() == ["features.npy"]


def test_read_record_of_files_without_one(tmp_path):
    np.savez(tmp_path / "reference.npz", features=np.zeros((2, 4), np.float16))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert read_record(tmp_path / "reference.npz") is None
    assert read_record(tmp_path / "junk.npz") is None
    assert read_record(tmp_path / "missing.npz") is None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_other_settings_are_refused_and_overwrite_redoes_them(tmp_path, clip4s, cached_models,
                                                              synthetic_checkpoints, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip4s, videos / "v.mp4")
    out = tmp_path / "out"
    output = out / "resnet_features" / "v.npz"
    checkpoint = synthetic_checkpoints / "resnet152-394f9c45.pth"

    status, err = run(capsys, out, "--video_path", videos, "--clip_len", "2",
                      weights=synthetic_checkpoints)
    assert status == 0, err
    assert load(output).shape == (2, 2048)
    record = read_record(output)
    assert record == {"model": "resnet", "clip_len": "2", "precision": "fp32",
                      "checkpoint_sha256": _sha256(checkpoint), "hero_features": __version__}
    assert is_complete(output, 2048, record)
    made = output.read_bytes()

    other = tmp_path / "other.pth"
    other.write_bytes(b"not the same checkpoint")
    for args, difference in ((["--clip_len", "1"], "clip_len 2 (now 1)"),
                             (["--clip_len", "2", "--precision", "bf16"],
                              "precision fp32 (now bf16)"),
                             (["--clip_len", "2", "--checkpoint", other],
                              f"checkpoint_sha256 {_sha256(checkpoint)} "
                              f"(now {_sha256(other)})")):
        status, err = run(capsys, out, "--video_path", videos, *args,
                          weights=synthetic_checkpoints)
        assert status == 2, err
        assert "1 finished output(s) were made with other settings" in err, err
        assert difference in err and "--overwrite" in err, err
        assert output.read_bytes() == made
    assert not is_complete(output, 2048, make_record("resnet", Fraction(1), _sha256(checkpoint),
                                                     "fp32", clip_model=False))

    status, err = run(capsys, out, "--video_path", videos, "--clip_len", "1", "--overwrite",
                      weights=synthetic_checkpoints)
    assert status == 0 and "1 done" in err, err
    assert load(output).shape == (4, 2048)
    assert read_record(output)["clip_len"] == "1"
    status, err = run(capsys, out, "--video_path", videos, "--clip_len", "1",
                      weights=synthetic_checkpoints)
    assert status == 0 and "0 done, 1 skipped" in err, err


def test_outputs_without_a_record_are_kept_as_done(tmp_path, clip, nothing_decoded,
                                                   synthetic_checkpoints, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "v.mp4")
    out = tmp_path / "out"
    output = out / "resnet_features" / "v.npz"
    output.parent.mkdir(parents=True)
    np.savez(output, features=np.ones((1, 2048), np.float16))  # as the reference wrote it
    before = output.read_bytes()
    status, err = run(capsys, out, "--video_path", videos, weights=synthetic_checkpoints)
    assert status == 0 and "0 done, 1 skipped" in err, err
    assert "1 finished output(s) carry no record" in err and "--overwrite" in err
    assert output.read_bytes() == before


# == 6: formats that open other files =========================================================

VOBSUB_INDEX = (b"# VobSub index file, v7 (do not modify this line!)\nsize: 720x480\n"
                b"id: en, index: 0\ntimestamp: 00:00:01:000, filepos: 000000000\n")


def test_no_demuxer_that_opens_other_files_is_allowed():
    allowed = set(_FORMAT_WHITELIST.split(","))
    assert {"vobsub", "mlv", "sap", "concat", "hls", "image2", "dash"} <= \
        _DEMUXERS_THAT_OPEN_OTHER_FILES
    assert not allowed & _DEMUXERS_THAT_OPEN_OTHER_FILES


def test_a_vobsub_index_never_opens_its_sibling(tmp_path, clip):
    from test_hardening import Inotify

    (tmp_path / "x.mp4").write_bytes(VOBSUB_INDEX)
    sibling = shutil.copy(clip, tmp_path / "x.sub")
    watch = Inotify(sibling)
    try:
        messages = list(decode_video_units(0, str(tmp_path / "x.mp4"), RESNET,
                                           DecodeSettings(Fraction(3, 2))))
        assert [m.kind for m in messages] == ["error"] and messages[0].stage == "open", messages
        assert "refusing the file: it looks like a VobSub subtitle index" in messages[0].reason
        assert watch.events() == 0, "FFmpeg opened the .sub"
        with open(sibling, "rb") as f:  # the watch itself works
            f.read(1)
        assert watch.events() > 0
    finally:
        watch.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_vobsub_index_next_to_a_fifo_neither_hangs_nor_opens_it(tmp_path, clip, workers):
    (tmp_path / "x.mp4").write_bytes(VOBSUB_INDEX)
    os.mkfifo(tmp_path / "x.sub")
    shutil.copy(clip, tmp_path / "good.mp4")
    jobs = [(0, str(tmp_path / "x.mp4"), (0,)), (1, str(tmp_path / "good.mp4"), (0,))]
    settings = RunConfig(models=["resnet"], clip_len=Fraction(3, 2),
                         decode_workers=workers).decode_settings
    if workers:
        messages = list(DecodePool(workers, RESNET, settings, video_timeout=30).messages(jobs))
    else:
        messages = list(inline_messages(iter(jobs), RESNET, settings, video_timeout=30))
    first = [m for m in messages if m.video_id == 0]
    assert [m.kind for m in first] == ["error", "done"], first
    assert "VobSub" in first[0].reason
    assert [m.kind for m in messages if m.video_id == 1][-2:] == ["end", "done"]


# == 8: damage verdicts do not depend on decoder threads ======================================

@pytest.fixture(scope="module")
def cut_mp4(tmp_path_factory) -> Path:
    """A faststart mp4 (4 s) cut at 90 %: its last packet is cut short, less than a second
    of the declared duration is missing (not "truncated"), so the verdict rests on the
    damage count."""
    folder = tmp_path_factory.mktemp("cut")
    source = bad_corpus.good_mp4(folder / "source.mp4", frames=100, faststart=True)
    data = source.read_bytes()
    cut = folder / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.9)])
    return cut


def _verdicts(messages) -> list[tuple]:
    return [(m.kind, *m[1:]) for m in messages if m.kind in ("warning", "error")]


def test_a_cut_file_gets_the_same_warning_with_any_decoder_threads(cut_mp4):
    verdicts = {threads: _verdicts(decode_video_units(
        0, str(cut_mp4), RESNET, DecodeSettings(Fraction(3, 2), threads=threads)))
                for threads in (1, 2, 4, 0)}
    first = verdicts[1]
    assert len(first) == 1 and first[0][0] == "warning", verdicts
    assert "1 of" in first[0][2] and "cut short" in first[0][2], first
    assert all(v == first for v in verdicts.values()), verdicts


def test_inline_and_workers_give_the_same_warning(cut_mp4):
    jobs = [(0, str(cut_mp4), (0,))]
    seen = {}
    for workers in (0, 1, 2):
        settings = RunConfig(models=["resnet"], clip_len=Fraction(3, 2),
                             decode_workers=workers).decode_settings
        messages = (list(DecodePool(workers, RESNET, settings).messages(iter(jobs)))
                    if workers else list(inline_messages(iter(jobs), RESNET, settings, 60)))
        seen[workers] = _verdicts(messages)
    assert len(seen[0]) == 1 and seen[0][0][0] == "warning", seen
    assert seen[0] == seen[1] == seen[2], seen


# == 9-12: one-line errors, validated values, long names, silent skips =========================

def test_symlink_loops_in_the_video_folder(tmp_path, clip, cached_models,
                                           synthetic_checkpoints, capsys):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(clip, videos / "sub" / "a.mp4")
    (videos / "loop.mp4").symlink_to("loop.mp4")  # ELOOP when followed
    (videos / "ping.mp4").symlink_to("pong.mp4")
    (videos / "pong.mp4").symlink_to("ping.mp4")
    (videos / "sub" / "up").symlink_to("..", target_is_directory=True)  # a folder loop
    out = tmp_path / "out"

    status = main(["gather", "--video_path", str(videos), "--output_dir", str(out),
                   "--model", "resnet"])
    captured = capsys.readouterr()
    assert status == 0 and "Traceback" not in captured.err, captured.err
    assert f"not following the folder link {videos / 'sub' / 'up'}" in captured.err
    listed = read_csv(out / "csv" / "resnet_info.csv")
    assert [row.video_path.name for row in listed] == ["loop.mp4", "ping.mp4", "pong.mp4",
                                                      "a.mp4"]

    status, err = run(capsys, out, "--video_path", videos, weights=synthetic_checkpoints)
    assert status == 1, err
    assert "1 folder link(s) not followed" in err and str(videos / "sub" / "up") in err
    logged = {Path(f["video_path"]).name: f for f in failures(out)}
    assert set(logged) == {"loop.mp4", "ping.mp4", "pong.mp4"}
    assert all(f["stage"] == "open" and "symlink loop" in f["error"] for f in logged.values())
    assert load(out / "resnet_features" / "sub" / "a.npz").shape == (1, 2048)


def _as_non_root(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a CLI command where file modes apply even to root (see bad_corpus)."""
    return subprocess.run([sys.executable, "-m", "hero_features", *command],
                          capture_output=True, text=True, env=_env(), timeout=300,
                          preexec_fn=bad_corpus.drop_file_capabilities, **kwargs)


@pytest.mark.skipif(not bad_corpus.can_make_unreadable(),
                    reason="root without prctl: modes cannot be enforced")
def test_an_unreadable_subfolder_is_one_line_for_gather_and_extract(tmp_path, clip,
                                                                    synthetic_checkpoints):
    videos = tmp_path / "videos"
    (videos / "locked").mkdir(parents=True)
    shutil.copy(clip, videos / "a.mp4")
    shutil.copy(clip, videos / "locked" / "b.mp4")
    (videos / "locked").chmod(0)
    try:
        for command in (["gather", "--model", "resnet", "--video_path", str(videos),
                         "--output_dir", str(tmp_path / "g")],
                        ["extract", "--model", "resnet", "--video_path", str(videos),
                         "--output_dir", str(tmp_path / "e"), "--device", "cpu",
                         "--weights_dir", str(synthetic_checkpoints), "--no_progress"]):
            done = _as_non_root(command)
            assert done.returncode == 2, done.stderr
            assert done.stderr.strip().splitlines() == [
                f"hero-features: error: cannot list the folder {videos / 'locked'}: Permission "
                f"denied" + ("" if command[0] == "gather" else
                             "; nothing was decoded (a folder left out would drop its videos "
                             "unsaid)")], done.stderr
    finally:
        (videos / "locked").chmod(0o755)
    assert not (tmp_path / "g" / "csv").exists()
    assert not list((tmp_path / "e").rglob("*.npz")) if (tmp_path / "e").exists() else True


def test_gather_output_dir_that_is_a_file(tmp_path, clip, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "a.mp4")
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    status = main(["gather", "--model", "resnet", "--video_path", str(videos),
                   "--output_dir", str(blocker)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert err.strip() == (f"hero-features: error: cannot write to --output_dir {blocker}: it "
                           f"is a file, not a folder")
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(not bad_corpus.can_make_unreadable(),
                    reason="root without prctl: modes cannot be enforced")
def test_gather_into_a_read_only_folder(tmp_path, clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "a.mp4")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        done = _as_non_root(["gather", "--model", "resnet", "--video_path", str(videos),
                             "--output_dir", str(locked)])
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"hero-features: error: cannot write to --output_dir "
                                   f"{locked}: Permission denied")
    assert list(locked.iterdir()) == []


def test_extract_output_dir_that_is_a_file(tmp_path, clip, nothing_decoded,
                                           synthetic_checkpoints, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "a.mp4")
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    status, err = run(capsys, blocker, "--video_path", videos, weights=synthetic_checkpoints)
    assert status == 2 and error_lines(err) == [
        f"hero-features: error: cannot write to --output_dir {blocker}: it is a file, not a "
        f"folder"], err
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("args, words", [
    (["--batch_size", str(10 ** 9)], "--batch_size 1000000000 needs at least"),
    (["--video_timeout", "-1"], "--video_timeout must be a number of seconds >= 0"),
    (["--video_timeout", "nan"], "--video_timeout must be a number of seconds >= 0"),
    (["--video_timeout", "inf"], "--video_timeout must be a number of seconds >= 0"),
    (["--clip_len", "1e400"], "--clip_len must be between 1/30 s"),
    (["--clip_len", "1e-3"], "--clip_len must be between 1/30 s"),
    (["--clip_len", "3601"], "and 3600 s, got 3601"),
    (["--clip_len", "0"], "clip_len must be positive"),
])
def test_values_no_run_can_use_are_refused_at_start(tmp_path, clip, args, words,
                                                    nothing_decoded, synthetic_checkpoints,
                                                    capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "a.mp4")
    status, err = run(capsys, tmp_path / "out", "--video_path", videos, *args,
                      weights=synthetic_checkpoints)
    assert status == 2 and len(error_lines(err)) == 1 and words in err, err
    assert not (tmp_path / "out").exists()


def test_the_shortest_and_longest_clip_len_are_accepted(tmp_path, clip, nothing_decoded,
                                                        synthetic_checkpoints, capsys):
    out = tmp_path / "out"
    output = out / "resnet_features" / "v.npz"
    output.parent.mkdir(parents=True)
    np.savez(output, features=np.ones((1, 2048), np.float16))  # done: nothing to decode
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "v.mp4")
    for clip_len in ("1/30", "3600"):
        status, err = run(capsys, out, "--video_path", videos, "--clip_len", clip_len,
                          weights=synthetic_checkpoints)
        assert status == 0, err


def test_a_batch_buffer_that_cannot_be_allocated_is_one_line(tmp_path, clip, cached_models,
                                                             synthetic_checkpoints, capsys,
                                                             monkeypatch):
    import hero_features.batcher as batcher

    real_torch = batcher.torch

    class TorchWithoutMemory:
        """the batcher's torch, whose empty() fails as the CPU allocator does."""

        def __getattr__(self, name):
            return getattr(real_torch, name)

        @staticmethod
        def empty(*args, **kwargs):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 6407168 bytes")

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "a.mp4")
    monkeypatch.setattr(batcher, "torch", TorchWithoutMemory())
    status, err = run(capsys, tmp_path / "out", "--video_path", videos, "--batch_size", "32",
                      weights=synthetic_checkpoints)
    monkeypatch.undo()
    assert status == 2, err
    # 32 frames of 298x224x3 (64x48 scaled to a short side of 224)
    assert error_lines(err) == [
        "hero-features: error: cannot allocate a 6 MiB input buffer for one resnet batch of "
        "--batch_size 32 ([enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
        "allocate memory: you tried to allocate 6407168 bytes); use a smaller --batch_size"], err


def test_temporary_names_always_fit(tmp_path):
    for name in ("日" * 80 + ".npz", "x" * 251 + ".npz", "a.npz",
                 os.fsdecode(b"caf\xe9" * 62 + b".npz")):
        temporary = temporary_sibling(tmp_path / name)
        assert len(os.fsencode(temporary.name)) <= NAME_MAX, name
        assert temporary.name.startswith(".") and temporary.name.endswith(".tmp")
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL))  # it can be made


def test_long_video_names(tmp_path, clip, cached_models, synthetic_checkpoints, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    fits = "日" * 80 + ".mp4"  # 244 bytes: the output fits, its old temporary name did not
    cannot = "x" * 252 + ".ts"  # 255 bytes: its output name would be 256
    shutil.copy(clip, videos / fits)
    shutil.copy(clip, videos / cannot)
    out = tmp_path / "out"
    status, err = run(capsys, out, "--video_path", videos, weights=synthetic_checkpoints)
    assert status == 1, err
    assert load(out / "resnet_features" / ("日" * 80 + ".npz")).shape == (1, 2048)
    logged = failures(out)
    assert len(logged) == 1 and logged[0]["video_path"] == str(videos / cannot)
    assert logged[0]["stage"] == "write"
    assert "256 bytes, over the file system's 255-byte limit" in logged[0]["error"]
    assert "1 done, 0 skipped (already complete), 1 failed, of 2" in err

    # In a csv, a name that cannot fit is the csv's fault: refused, naming the row.
    table = write_csv_text(tmp_path / "c.csv", [(videos / fits,
                                                 out / "resnet_features" / ("y" * 256))])
    status, err = run(capsys, out, "--csv", table, weights=synthetic_checkpoints)
    assert status == 2 and "line 2: the name" in err and "260 bytes" in err, err


def test_an_unterminated_csv_quote_is_named(tmp_path, clip, nothing_decoded,
                                            synthetic_checkpoints, capsys):
    table = tmp_path / "q.csv"
    table.write_text(f'video_path,feature_path\n{clip},"{tmp_path}/out/a.npz\n'
                     f'{clip},{tmp_path}/out/b.npz\n')
    status, err = run(capsys, tmp_path / "out", "--csv", table, weights=synthetic_checkpoints)
    assert status == 2, err
    assert "line 2: a quote opened on this line is never closed" in err, err
    with pytest.raises(ManifestError, match="line 2: a quote opened"):
        read_csv(table)


def test_folder_links_are_reported_not_dropped_unsaid(tmp_path, clip):
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(clip, elsewhere / "x.mp4")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / ".hidden_link").symlink_to(elsewhere, target_is_directory=True)
    skipped: list = []
    assert find_videos(root, skipped=skipped) == []
    assert skipped == [root / "linked"]


def test_reliability_doc_lists_every_case():
    text = RELIABILITY.read_text()
    for case in range(1, 13):
        assert f"| {case} |" in text, f"case {case} missing from docs/reliability.md"
