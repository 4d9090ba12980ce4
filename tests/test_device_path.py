"""The device path's frames (YUV planes + devicescale) against the CPU graph's, per frame.

With `scale_on="device"` the decoder hands over each picked frame's YUV planes and the
geometry to convert them; converted by devicescale (here on the CPU), they must be the very
bytes the CPU path (the reference's scale + rgb24 conversion) gives, for every decode spec
the five models use, on the sample videos and on the timeline corpus. Frames the device path
does not cover must say why and still give the CPU graph's bytes. Then the same through the
producer (the units the models get) and the command line (the features they write).
"""
from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import hero_features
from hero_features.cli import main
from hero_features.config import DecodeSettings, input_groups
from hero_features.device_runner import rgb_units
from hero_features.devicescale import rgb_from_packed
from hero_features.errors import UsageError
from hero_features.messages import Failed, ScaledOnCpu, Units
from hero_features.models import get_spec
from hero_features.producer import decode_video_units
from hero_features.video import DecodeSpec, decode, probe
from timeline_corpus import CASES

from conftest import VIDEOS
from helpers import extract, load

SPECS = [DecodeSpec("0.5", 224, False), DecodeSpec(str(1 / 1.5), 224, True),
         DecodeSpec("30", 224, True), DecodeSpec(str(1 / 1.5), 288, True),
         DecodeSpec("2.0", 224, False)]
# Timeline-corpus videos whose frames change orientation or size mid-stream: the CLI rebuilt
# its graph (with a bicubic autoscale) there, which only the CPU graph reproduces.
CPU_ONLY = {"concat_resize.ts", "orientation_sei.mp4"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the integer ops are tiny; the pool only adds overhead here
    yield
    torch.set_num_threads(threads)


def assert_device_frames_equal_cpu_frames(path) -> int:
    info = probe(path)
    cpu = list(decode(path, SPECS, info))
    device = list(decode(path, SPECS, info, scale_on="device"))
    assert [b for b, _ in device] == [b for b, _ in cpu]
    for (branch, expected), (_, pick) in zip(cpu, device):
        assert pick.geometry is not None, pick.reason
        packed = torch.from_numpy(pick.packed()[None])
        rgb = rgb_from_packed(packed, pick.geometry)[0].numpy()
        assert np.array_equal(rgb, expected), (path, branch)
    return len(cpu)


@pytest.mark.parametrize("video", sorted(p.name for p in VIDEOS.glob("*.mp4")))
def test_sample_videos(video):
    assert assert_device_frames_equal_cpu_frames(VIDEOS / video) > 50


@pytest.mark.parametrize("name", [c.name for c in CASES if c.name not in CPU_ONLY])
def test_timeline_corpus(timeline_corpus, name):
    assert assert_device_frames_equal_cpu_frames(timeline_corpus[name]) > 40


@pytest.mark.parametrize("name", sorted(CPU_ONLY))
def test_frames_after_a_graph_rebuild_are_the_cpu_graphs(timeline_corpus, name):
    path = timeline_corpus[name]
    cpu = list(decode(path, SPECS))
    device = list(decode(path, SPECS, scale_on="device"))
    assert [b for b, _ in device] == [b for b, _ in cpu]
    on_device = 0
    for (branch, expected), (_, pick) in zip(cpu, device):
        if pick.geometry is None:
            assert "mid-stream" in pick.reason
            with pytest.raises(ValueError, match="mid-stream"):
                pick.packed()
            rgb = pick.rgb()
        else:
            on_device += 1
            rgb = rgb_from_packed(torch.from_numpy(pick.packed()[None]), pick.geometry)[0]
        assert np.array_equal(np.asarray(rgb), expected), (name, branch)
    # Those after it cannot go to the device; in concat_resize the frames before the size
    # change do (orientation_sei's first orientation change comes before its first pick).
    assert on_device < len(cpu)
    assert (on_device > 0) == (name == "concat_resize.ts")


# == the units the models get (producer) ===========================================================

ALL = ("slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4")
GROUPS = input_groups([get_spec(m) for m in ALL])


@pytest.fixture(scope="module")
def ten_bit(tmp_path_factory) -> Path:
    """A 10-bit 4:2:0 video (as HDR phones record): a pixel format the device path does not
    cover."""
    path = tmp_path_factory.mktemp("ten_bit") / "ten_bit.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=96x64:rate=25:duration=2", "-c:v", "ffv1", "-pix_fmt",
                    "yuv420p10le", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def colour_change(tmp_path_factory) -> Path:
    """Two MPEG-TS segments cut together, the same size and pixel format but other colour
    matrices (BT.709, then SMPTE 170M): no graph rebuild, but the scaler follows each frame's
    tags."""
    folder = tmp_path_factory.mktemp("colour_change")
    parts = []
    for name, matrix in (("a.ts", "bt709"), ("b.ts", "smpte170m")):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=160x96:rate=25:duration=2", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-colorspace", matrix, "-color_range", "tv",
                        str(folder / name)], check=True)
        parts.append((folder / name).read_bytes())
    path = folder / "colour_change.ts"
    path.write_bytes(b"".join(parts))
    return path


def units_by_group(path, scale_on: str) -> tuple[dict, list, set]:
    """Each group's units as rgb24 (packed ones converted as the device runner does), the
    ScaledOnCpu reasons, and which kinds of Units messages came (packed or rgb24)."""
    settings = DecodeSettings(clip_len=Fraction(3, 2), scale_on=scale_on)
    units: dict = {g: [] for g in range(len(GROUPS))}
    reasons, kinds = [], set()
    for message in decode_video_units(0, str(path), GROUPS, settings):
        assert not isinstance(message, Failed), message
        if isinstance(message, Units):
            array = message.units
            kinds.add("rgb24" if message.geometry is None else "packed")
            if message.geometry is not None:
                array = rgb_units(torch.from_numpy(array), message.geometry).numpy()
            units[message.group].append(array)
        elif isinstance(message, ScaledOnCpu):
            reasons.append(message.reason)
    return {g: np.concatenate(u) for g, u in units.items()}, reasons, kinds


def assert_same_units(path) -> tuple[list, set]:
    cpu, _, cpu_kinds = units_by_group(path, "cpu")
    device, reasons, kinds = units_by_group(path, "device")
    assert cpu_kinds == {"rgb24"}
    assert cpu.keys() == device.keys()
    for group, expected in cpu.items():
        assert len(expected) > 0
        assert np.array_equal(device[group], expected), (path, GROUPS[group])
    return reasons, kinds


@pytest.mark.parametrize("video", sorted(p.name for p in VIDEOS.glob("*.mp4")))
def test_every_models_units_are_the_cpu_paths_on_the_samples(video):
    reasons, kinds = assert_same_units(VIDEOS / video)
    assert (reasons, kinds) == ([], {"packed"})


def test_a_rebuilt_graph_sends_its_later_frames_as_the_cpu_graphs(timeline_corpus):
    reasons, kinds = assert_same_units(timeline_corpus["concat_resize.ts"])
    assert kinds == {"packed", "rgb24"}
    assert len(reasons) == 1 and "mid-stream" in reasons[0]


def test_colour_tags_changing_mid_stream_are_followed(colour_change):
    reasons, kinds = assert_same_units(colour_change)
    # The frame models' units go packed, each message with its frames' matrix; the one clip
    # that spans the change mixes two geometries and goes through the CPU graph.
    assert kinds == {"packed", "rgb24"}
    assert reasons == ["the frames of one clip differ in size or colour tags"]


def test_a_pixel_format_the_device_path_lacks_goes_through_the_cpu_graph(ten_bit):
    reasons, kinds = assert_same_units(ten_bit)
    assert kinds == {"rgb24"}
    assert len(reasons) == 1 and "yuv420p10le" in reasons[0]


# == the features written (command line, Python API) ===============================================

@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, timeline_corpus, ten_bit) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    for source in (VIDEOS / "v07_400x300_25fps_2s.mp4", timeline_corpus["concat_resize.ts"],
                   ten_bit):
        shutil.copy(source, folder / source.name)
    return folder


def _extract(folder: Path, out: Path, weights: Path, scale_on: str, workers: str) -> int:
    return extract("--model", "resnet,mil-nce", "--video_path", folder, "--output_dir", out,
                   "--clip_len", "3/2", "--scale-on", scale_on, "--num_decoding_thread",
                   workers, weights=weights)


@pytest.fixture(scope="module")
def cpu_run(mixed_folder, tmp_path_factory, synthetic_checkpoints) -> tuple[Path, str]:
    """The folder through the CPU graph: the outputs, and what the run printed."""
    out = tmp_path_factory.mktemp("cpu_run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        assert _extract(mixed_folder, out, synthetic_checkpoints, "cpu", "0") == 0
    return out, printed.getvalue()


def test_the_cpu_graph_run_has_no_scaled_on_cpu_line(cpu_run):
    assert "videos: 3 done" in cpu_run[1]  # the summary was captured
    assert "scaled on the CPU" not in cpu_run[1]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_scale_on_device_writes_the_cpu_runs_features(mixed_folder, tmp_path, capsys, cpu_run,
                                                      synthetic_checkpoints, workers):
    """Decode workers (shared-memory slots sized for packed frames) or inline decoding."""
    expected, _ = cpu_run
    out = tmp_path / "device"
    assert _extract(mixed_folder, out, synthetic_checkpoints, "device", workers) == 0
    printed = capsys.readouterr()
    # The one line that names the videos the device path left to the CPU, and why.
    line, = [x for x in (printed.out + printed.err).splitlines() if "scaled on the CPU" in x]
    assert line.strip().startswith("2 of the done were scaled on the CPU, not the device")
    assert "yuv420p10le" in line and "mid-stream" in line
    written = sorted(p.relative_to(expected) for p in expected.rglob("*.npz"))
    assert len(written) == 6
    for name in written:
        assert np.array_equal(load(out / name), load(expected / name)), name


def test_the_python_api_takes_scale_on(synthetic_checkpoints):
    video = VIDEOS / "carphone_pristine.mp4"
    features = {mode: hero_features.extract(video, "clip-vit", "3/2", "cpu",
                                            synthetic_checkpoints, scale_on=mode)
                for mode in ("cpu", "device")}
    assert np.array_equal(features["device"]["clip-vit"], features["cpu"]["clip-vit"])


def test_scale_on_is_checked_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--video_path", str(tmp_path), "--model", "resnet", "--scale-on", "gpu"])
    assert stop.value.code == 2
    assert "--scale-on" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--scale-on must be one of cpu, device"):
        hero_features.FeatureExtractor("resnet", scale_on="gpu")
