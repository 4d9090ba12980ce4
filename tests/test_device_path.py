"""The device path's frames (YUV planes + devicescale) against the CPU graph's, per frame.

With `scale_on="device"` the decoder hands over each picked frame's YUV planes and the
geometry to convert them; converted by devicescale (here on the CPU), they must be the very
bytes the CPU path (the reference's scale + rgb24 conversion) gives, for every decode spec
the five models use, on the sample videos and on the timeline corpus. Videos the device path
does not cover must say why and go to the CPU graph.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hero_features.devicescale import rgb_from_packed
from hero_features.video import DecodeSpec, DevicePathUnavailable, decode, probe
from timeline_corpus import CASES

from conftest import VIDEOS

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
    for (branch, expected), (_, frame) in zip(cpu, device):
        packed = torch.from_numpy(np.array(frame.packed)[None])
        rgb = rgb_from_packed(packed, frame.geometry)[0].numpy()
        assert np.array_equal(rgb, expected), (path, branch)
    return len(cpu)


@pytest.mark.parametrize("video", sorted(p.name for p in VIDEOS.glob("*.mp4")))
def test_sample_videos(video):
    assert assert_device_frames_equal_cpu_frames(VIDEOS / video) > 50


@pytest.mark.parametrize("name", [c.name for c in CASES if c.name not in CPU_ONLY])
def test_timeline_corpus(timeline_corpus, name):
    assert assert_device_frames_equal_cpu_frames(timeline_corpus[name]) > 40


@pytest.mark.parametrize("name", sorted(CPU_ONLY))
def test_graph_rebuilds_stay_on_the_cpu(timeline_corpus, name):
    with pytest.raises(DevicePathUnavailable, match="mid-stream"):
        list(decode(timeline_corpus[name], SPECS, scale_on="device"))
