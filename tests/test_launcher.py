"""launch_container.sh: the docker command it builds, run and sourced, against a stand-in docker."""
from __future__ import annotations

import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "launch_container.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")

# `docker info` answers with $FAKE_DOCKER_RUNTIMES (or fails when it is "FAIL"); any other
# call records its arguments.
FAKE_DOCKER = """#!/bin/sh
if [ "$1" = info ]; then
    [ "$FAKE_DOCKER_RUNTIMES" = FAIL ] && exit 1
    printf '%s\\n' "$FAKE_DOCKER_RUNTIMES"
    exit 0
fi
: > "$FAKE_DOCKER_ARGV"
for arg in "$@"; do printf '%s\\n' "$arg" >> "$FAKE_DOCKER_ARGV"; done
"""
WITH_NVIDIA = '{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"nvidia-container-runtime"}}'
WITHOUT_NVIDIA = '{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}'
# What the script and the sourcing check run besides docker: PATH holds only these, so that an
# NVIDIA toolkit installed on the test machine cannot change what the script sees.
TOOLS = ("mkdir", "id", "dirname", "sort")

# Bash variables that change by themselves between two commands.
DYNAMIC = {"_", "BASH_ARGC", "BASH_ARGV", "BASH_LINENO", "BASH_SOURCE", "BASH_COMMAND",
           "BASH_REMATCH", "PIPESTATUS", "LINENO", "RANDOM", "SRANDOM", "SECONDS",
           "EPOCHREALTIME", "EPOCHSECONDS", "BASHPID", "FUNCNAME", "BASH_SUBSHELL"}


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    environ = {k: v for k, v in os.environ.items()
               if k not in {"CUDA_VISIBLE_DEVICES", "HERO_FEATURES_IMAGE", "HERO_FEATURES_GPUS",
                            "HERO_FEATURES_SKIP_GPU_CHECK"}}
    environ["PATH"] = str(bin_dir)
    environ["FAKE_DOCKER_ARGV"] = str(tmp_path / "argv.txt")
    environ["FAKE_DOCKER_RUNTIMES"] = WITH_NVIDIA
    return environ


@pytest.fixture
def dirs(tmp_path):
    video = tmp_path / "my videos"
    video.mkdir()
    return video, tmp_path / "features out"


def _argv(env) -> list[str]:
    return Path(env["FAKE_DOCKER_ARGV"]).read_text().splitlines()


BASH = shutil.which("bash")


def _run(args, env, **kw):
    return subprocess.run([BASH, str(SCRIPT), *map(str, args)], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60, **kw)


def _expected(video: Path, out: Path, devices="all", tty="-i",
              image="hero-features:latest", command=("bash",)) -> list[str]:
    gpus = [] if devices is None else ["--gpus", f'"device={devices}"',
                                       "--env", f"NVIDIA_VISIBLE_DEVICES={devices}"]
    return [
        "run",
        *gpus,
        "--ipc=host", "--network=host", "--rm", tty,
        "--user", f"{os.getuid()}:{os.getgid()}",
        "--mount", f'type=bind,"src={os.path.realpath(REPO)}",dst=/src',
        "--mount", f'type=bind,"src={os.path.realpath(video)}",dst=/video,readonly',
        "--mount", f'type=bind,"src={os.path.realpath(out)}",dst=/output',
        "--env", "PYTHONPATH=/src/src",
        "--workdir", "/src",
        image, *command,
    ]


def test_exact_docker_command(env, dirs):
    video, out = dirs
    result = _run([video, out], env)
    assert result.returncode == 0, result.stderr
    assert _argv(env) == _expected(video, out)
    assert out.is_dir()  # made by the script, not by docker as root


def test_cuda_visible_devices_image_and_command(env, dirs):
    video, out = dirs
    env.update(CUDA_VISIBLE_DEVICES="1,3", HERO_FEATURES_IMAGE="registry.example/hf:dev")
    result = _run([video, out, "hero-features", "extract", "--model", "resnet"], env)
    assert result.returncode == 0, result.stderr
    assert _argv(env) == _expected(video, out, devices="1,3", image="registry.example/hf:dev",
                                   command=("hero-features", "extract", "--model", "resnet"))


def test_relative_paths_and_quotes_and_commas(env, tmp_path):
    video = tmp_path / 'odd "name", here'
    video.mkdir()
    result = _run([os.path.relpath(video, tmp_path), "out"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    argv = _argv(env)
    # CSV quoting: the field is quoted and its inner quotes are doubled.
    assert f'type=bind,"src={os.path.realpath(video)}",dst=/video,readonly'.replace(
        '"name"', '""name""') in argv
    assert f'type=bind,"src={os.path.realpath(tmp_path / "out")}",dst=/output' in argv


def test_terminal_gets_it(env, dirs):
    video, out = dirs
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run([BASH, str(SCRIPT), str(video), str(out)], env=env,
                                stdin=secondary, capture_output=True, text=True, timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert result.returncode == 0, result.stderr
    assert _argv(env) == _expected(video, out, tty="-it")


@pytest.mark.parametrize("args", [[], ["only-one"], ["", "out"]])
def test_usage_error_exits_2(env, tmp_path, args):
    result = _run(args, env, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: launch_container.sh" in result.stderr
    assert not Path(env["FAKE_DOCKER_ARGV"]).exists()


def test_missing_video_dir_exits_2(env, tmp_path):
    result = _run([tmp_path / "nope", tmp_path / "out"], env)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not Path(env["FAKE_DOCKER_ARGV"]).exists()


SOURCE_CHECK = r"""
snapshot() {
    set | LC_ALL=C sort > "$1.set"
    declare -F | LC_ALL=C sort > "$1.fn"
    { set -o; shopt; } > "$1.opt"
}
set -- caller-arg-1 caller-arg-2
snapshot "$SNAP/before"
source "$SCRIPT" "$VIDEO" "$OUT"
echo "status=$?"
snapshot "$SNAP/after"
source "$SCRIPT"
echo "usage_status=$?"
snapshot "$SNAP/after-usage"
echo "args=$*"
"""


def _variables(path: Path) -> list[str]:
    kept = []
    for line in path.read_text().splitlines():
        name = line.split("=", 1)[0]
        if name not in DYNAMIC:
            kept.append(line)
    return kept


def test_sourcing_leaks_nothing(env, dirs, tmp_path):
    video, out = dirs
    snap = tmp_path / "snap"
    snap.mkdir()
    env.update(SCRIPT=str(SCRIPT), VIDEO=str(video), OUT=str(out), SNAP=str(snap))
    result = subprocess.run([BASH, "-c", SOURCE_CHECK], env=env, text=True,
                            capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "status=0" in result.stdout
    assert "usage_status=2" in result.stdout
    assert "args=caller-arg-1 caller-arg-2" in result.stdout
    assert _argv(env) == _expected(video, out)
    for after in ("after", "after-usage"):
        assert _variables(snap / f"{after}.set") == _variables(snap / "before.set")
        assert (snap / f"{after}.fn").read_text() == (snap / "before.fn").read_text()
        assert (snap / f"{after}.opt").read_text() == (snap / "before.opt").read_text()


# == GPUs: none, and a host without the NVIDIA runtime ===========================================

def test_gpus_none_runs_without_gpus(env, dirs):
    video, out = dirs
    env.update(HERO_FEATURES_GPUS="none", FAKE_DOCKER_RUNTIMES=WITHOUT_NVIDIA,
               CUDA_VISIBLE_DEVICES="0")
    result = _run([video, out, "hero-features", "models"], env)
    assert result.returncode == 0, result.stderr
    assert _argv(env) == _expected(video, out, devices=None,
                                   command=("hero-features", "models"))


def test_gpus_picks_the_devices(env, dirs):
    video, out = dirs
    env.update(HERO_FEATURES_GPUS="1,3", CUDA_VISIBLE_DEVICES="0")
    result = _run([video, out], env)
    assert result.returncode == 0, result.stderr
    assert _argv(env) == _expected(video, out, devices="1,3")


def test_a_missing_nvidia_runtime_is_named_with_what_to_do(env, dirs):
    video, out = dirs
    env["FAKE_DOCKER_RUNTIMES"] = WITHOUT_NVIDIA
    result = _run([video, out], env)
    assert result.returncode == 2
    assert not Path(env["FAKE_DOCKER_ARGV"]).exists()  # docker run never called
    assert not out.exists()  # nothing left behind
    message = " ".join(result.stderr.split())
    assert "docker cannot give this container GPUs" in message
    assert "nvidia-container-toolkit" in message and "nvidia-ctk runtime configure" in message
    assert "HERO_FEATURES_GPUS=none" in message


@pytest.mark.parametrize("way", ["hook on PATH", "cli on PATH", "check skipped",
                                 "docker info fails"])
def test_the_runtime_check_lets_these_through(env, dirs, way):
    video, out = dirs
    env["FAKE_DOCKER_RUNTIMES"] = WITHOUT_NVIDIA
    if way in ("hook on PATH", "cli on PATH"):
        tool = Path(env["PATH"]) / ("nvidia-container-runtime-hook" if way == "hook on PATH"
                                    else "nvidia-container-cli")
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    elif way == "check skipped":
        env["HERO_FEATURES_SKIP_GPU_CHECK"] = "1"
    else:  # docker run will say what is wrong with docker itself
        env["FAKE_DOCKER_RUNTIMES"] = "FAIL"
    result = _run([video, out], env)
    assert result.returncode == 0, result.stderr
    assert _argv(env) == _expected(video, out)
