"""The extract program runs under a caching allocator (allocator.py): detected, reported in
the run summary, switched off by HERO_FEATURES_ALLOCATOR=system, a missing library a note."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from hero_features import allocator
from hero_features.config import DecodeSettings, InputGroup
from hero_features.messages import Warned
from hero_features.workers import DecodePool
from videos import write_video

TCMALLOC = allocator.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(
    TCMALLOC is None, reason=f"tcmalloc is not installed ({allocator.INSTALL_HINT})")


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("alloc-videos")
    write_video(folder / "one.mp4", frames=25, fps=25, width=64, height=48)
    return folder


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HERO_FEATURES_ALLOCATOR", "LD_PRELOAD")}
    env.update(changes)
    return env


def _extract(command: list[str], videos: Path, out: Path, weights: Path, env: dict,
             *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command, "extract", "--model", "resnet", "--video_path", str(videos),
         "--output_dir", str(out), "--weights_dir", str(weights), "--device", "cpu",
         "--no_progress", "--num_decoding_thread", "1", *extra],
        env=env, capture_output=True, text=True, timeout=600)


def _summary_allocator(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("allocator: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("note:")]


MODULE = [sys.executable, "-m", "hero_features"]


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("hero-features")
    if not script.is_file():
        pytest.skip(f"no hero-features console script next to {sys.executable}")
    entry = next((e for e in importlib.metadata.entry_points(group="console_scripts")
                  if e.name == "hero-features"), None)
    if entry is None or entry.value != "hero_features.cli:console_main":
        pytest.skip(f"the installed hero-features script runs "
                    f"{entry.value if entry else 'nothing'}, older than this checkout: "
                    f"reinstall the package (pip install -e .)")
    return [str(script)]


@needs_tcmalloc
@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_extract_runs_under_tcmalloc_and_says_so(entry, tiny_videos, synthetic_checkpoints,
                                                 tmp_path):
    command = _console_script() if entry == "console script" else MODULE
    done = _extract(command, tiny_videos, tmp_path / "out", synthetic_checkpoints, _env())
    assert done.returncode == 0, done.stderr
    line = _summary_allocator(done.stderr)
    assert line.startswith("allocator: tcmalloc (") and "libtcmalloc" in line, line
    assert _notes(done.stderr) == []
    assert (tmp_path / "out" / "resnet_features" / "one.npz").is_file()


def test_system_turns_it_off(tiny_videos, synthetic_checkpoints, tmp_path):
    done = _extract(MODULE, tiny_videos, tmp_path / "out", synthetic_checkpoints,
                    _env(HERO_FEATURES_ALLOCATOR="system"))
    assert done.returncode == 0, done.stderr
    assert _summary_allocator(done.stderr).startswith("allocator: system ("), done.stderr
    assert _notes(done.stderr) == []


def test_a_missing_library_falls_back_with_one_note(tiny_videos, synthetic_checkpoints,
                                                   tmp_path):
    missing = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    done = _extract(MODULE, tiny_videos, tmp_path / "out", synthetic_checkpoints,
                    _env(HERO_FEATURES_ALLOCATOR=str(missing)))
    assert done.returncode == 0, done.stderr
    assert _notes(done.stderr) == [f"note: HERO_FEATURES_ALLOCATOR={missing} does not exist; "
                                   f"using the system allocator"]
    assert _summary_allocator(done.stderr).startswith("allocator: system ("), done.stderr


def test_a_library_the_linker_refuses_is_tried_once(tmp_path):
    """Not an ELF object: ld.so ignores it, the restarted process must not restart again.
    (A usage error right after the allocator step keeps this test model-free.)"""
    fake = tmp_path / "libfake.so"
    fake.write_text("not a shared object\n")
    done = subprocess.run([*MODULE, "extract", "--model", "resnet", "--video_path",
                           str(tmp_path / "no-such-folder"), "--output_dir",
                           str(tmp_path / "out")],
                          env=_env(HERO_FEATURES_ALLOCATOR=str(fake)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert _notes(done.stderr) == [f"note: could not preload {fake}; using the system "
                                   f"allocator"], done.stderr
    assert "is not a folder" in done.stderr


def test_a_value_that_is_neither_a_mode_nor_a_path_is_a_usage_error(tmp_path):
    done = subprocess.run([*MODULE, "extract", "--model", "resnet", "--video_path",
                           str(tmp_path), "--output_dir", str(tmp_path / "out")],
                          env=_env(HERO_FEATURES_ALLOCATOR="tcmallc"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hero-features: error: HERO_FEATURES_ALLOCATOR must be auto, system or the path of "
        "a malloc library (.so), not 'tcmallc'"]


def test_main_called_in_process_never_restarts(tiny_videos, synthetic_checkpoints, tmp_path,
                                               monkeypatch, capsys):
    from hero_features.cli import main

    def no_exec(*args):
        raise AssertionError(f"main() tried to exec {args}")

    monkeypatch.setattr(os, "execv", no_exec)
    monkeypatch.delenv("HERO_FEATURES_ALLOCATOR", raising=False)
    assert main(["extract", "--model", "resnet", "--video_path", str(tiny_videos),
                 "--output_dir", str(tmp_path / "out"), "--weights_dir",
                 str(synthetic_checkpoints), "--device", "cpu", "--no_progress",
                 "--num_decoding_thread", "0"]) == 0
    # pytest's own malloc, whatever it is, and said as such
    assert _summary_allocator(capsys.readouterr().err) == \
        f"allocator: {allocator.describe()}"


def test_the_python_api_never_restarts_nor_speaks_of_the_allocator(
        tiny_videos, synthetic_checkpoints, monkeypatch, capsys):
    """hero_features.extract runs inside the user's interpreter: it cannot swap its malloc,
    so it must not exec, touch LD_PRELOAD or print notes about it (docs/api.md)."""
    import hero_features

    def no_exec(*args):
        raise AssertionError(f"the API tried to exec {args}")

    monkeypatch.setattr(os, "execv", no_exec)
    monkeypatch.delenv("HERO_FEATURES_ALLOCATOR", raising=False)
    preload = os.environ.get("LD_PRELOAD")
    features = hero_features.extract(tiny_videos / "one.mp4", models="resnet", device="cpu",
                                     weights_dir=synthetic_checkpoints)
    assert features["resnet"].shape[1] == 2048
    assert os.environ.get("LD_PRELOAD") == preload
    err = capsys.readouterr().err
    assert "allocator" not in err and "tcmalloc" not in err, err


def report_allocator(video_id, path, groups, settings, active=None):
    """A decode worker's decode_fn: which malloc the worker process runs on."""
    yield Warned(video_id, "allocator", allocator.malloc_library())


@needs_tcmalloc
def test_decode_workers_inherit_the_preload(monkeypatch):
    # The state after the restart: the main process's environment names the library.
    monkeypatch.setenv("LD_PRELOAD", str(TCMALLOC))
    pool = DecodePool(2, [InputGroup(("resnet",), "frame", 224, False)],
                      DecodeSettings(clip_len=Fraction(2)), decode_fn=report_allocator,
                      shared_memory=False)
    seen = [m.text for m in pool.messages((i, "unused", (0,)) for i in range(2))
            if m.kind == "warning"]
    assert len(seen) == 2 and all(os.path.samefile(s, TCMALLOC) for s in seen), seen


def _non_pie_python() -> str | None:
    """A Python executable built without PIE (ELF type EXEC), as Debian's /usr/bin/python3.11."""
    for candidate in ("/usr/bin/python3", "/usr/bin/python3.11"):
        try:
            with open(candidate, "rb") as binary:
                header = binary.read(18)
        except OSError:
            continue
        if header[:4] == b"\x7fELF" and int.from_bytes(header[16:18], "little") == 2:
            return candidate
    return None


@needs_tcmalloc
def test_the_allocator_is_told_right_in_a_python_built_without_pie(tmp_path):
    """In a non-PIE program, malloc's address is a stub inside the program itself (Debian's
    python3 in the Docker image): the allocator must still be named, or extract would think
    the preload failed, drop it for its decode workers and report "other"."""
    python = _non_pie_python()
    if python is None:
        pytest.skip("no Python built without PIE on this machine")
    probe = ("import importlib.util, sys\n"
             "spec = importlib.util.spec_from_file_location('allocator', sys.argv[1])\n"
             "module = importlib.util.module_from_spec(spec)\n"
             "spec.loader.exec_module(module)\n"
             "print(module.describe())\n")
    script = tmp_path / "probe.py"
    script.write_text(probe)
    path = Path(allocator.__file__)
    preloaded = subprocess.run([python, str(script), str(path)], capture_output=True, text=True,
                               env=_env(LD_PRELOAD=str(TCMALLOC)), timeout=60)
    plain = subprocess.run([python, str(script), str(path)], capture_output=True, text=True,
                           env=_env(), timeout=60)
    assert preloaded.stdout.startswith("tcmalloc ("), preloaded.stdout + preloaded.stderr
    assert plain.stdout.startswith("system ("), plain.stdout + plain.stderr
