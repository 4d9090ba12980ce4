"""The in-process decoder against the ffmpeg CLI graph the reference ran, and its probe."""
from __future__ import annotations

import gc

import shutil
import subprocess
from pathlib import Path

import pytest

from hero_features.video import (DecodeSpec, VideoError, decode, filter_chain, output_dims,
                                 probe)
from videos import read_index, write_video

from conftest import VIDEOS

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                  reason="Debian's ffmpeg CLI is needed for the byte comparison")


def reference_cli_bytes(path: Path, spec: DecodeSpec, width: int, height: int) -> bytes:
    """What the reference's ffmpeg-python command produced for this graph (plus flags=bilinear,
    the 2020 environment's default scaler)."""
    parts, label = [], "[0]"
    for i, (name, args) in enumerate(filter_chain(spec, width, height)[:-1]):  # -pix_fmt does the format
        parts.append(f"{label}{name}={args}[s{i}]")
        label = f"[s{i}]"
    cmd = ["ffmpeg", "-v", "error", "-i", str(path), "-filter_complex", ";".join(parts),
           "-map", label, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


SPECS = {
    "slowfast": DecodeSpec("30", 224, True),
    "resnet_2": DecodeSpec("0.5", 224, False),
    "resnet_1.5": DecodeSpec(str(1 / 1.5), 224, False),
    "clip-rn50x4": DecodeSpec(str(1 / 1.5), 288, True),
}


@needs_ffmpeg
@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("video", sorted(p.name for p in VIDEOS.glob("*.mp4")))
def test_frames_byte_identical_to_ffmpeg_cli(video, spec_name):
    path, spec = VIDEOS / video, SPECS[spec_name]
    info = probe(path)
    ours = b"".join(frame.tobytes() for _, frame in decode(path, [spec], info))
    assert ours == reference_cli_bytes(path, spec, info.width, info.height)


@needs_ffmpeg
def test_split_branches_each_identical_to_their_single_graph():
    path = VIDEOS / "carphone_pristine.mp4"
    info = probe(path)
    specs = list(SPECS.values())
    branches = {i: [] for i in range(len(specs))}
    for branch, frame in decode(path, specs, info):
        branches[branch].append(frame.tobytes())
    for i, spec in enumerate(specs):
        assert b"".join(branches[i]) == reference_cli_bytes(path, spec, info.width, info.height)


@needs_ffmpeg
def test_rotated_video_is_scaled_from_stored_size_then_turned_like_the_cli(tmp_path):
    path = write_video(tmp_path / "rot.mp4", 12, width=320, height=176, rotation=90)
    info = probe(path)
    assert (info.width, info.height) == (320, 176)  # stored size, rotation ignored
    spec = DecodeSpec("30", 224, True)
    frames = [f for _, f in decode(path, [spec], info)]
    assert frames[0].shape == (224, 224, 3)
    assert b"".join(f.tobytes() for f in frames) == reference_cli_bytes(path, spec, 320, 176)


def test_probe_matches_what_ffprobe_gave_the_reference():
    info = probe(VIDEOS / "carphone_pristine.mp4")
    assert (info.width, info.height, info.fps) == (176, 144, 29)  # floor(29.97)
    assert info.duration == pytest.approx(4.004) and info.nb_frames == 120
    big = probe(VIDEOS / "bigbuckbunny.mp4")
    assert big.duration == pytest.approx(5.28)  # the stream's, not the container's 5.312


def test_webm_stream_has_no_duration_so_none(tmp_path):
    path = write_video(tmp_path / "x.webm", 10, codec="libvpx", width=64, height=48)
    info = probe(path)
    assert info.duration is None and info.nb_frames is None


# The reference study's worked example (docs/fidelity.md 4): which source frames the fps filter picks, 10 s at 25 fps.
@pytest.mark.parametrize("fps,expected", [
    ("0.5", [24, 74, 124, 174, 224]),
    (str(1 / 1.5), [18, 56, 93, 131, 168, 206, 243]),
    ("2.0", [6, 18, 31, 43, 56, 68, 81, 93, 106, 118, 131, 143, 156, 168, 181, 193, 206, 218,
             231, 243]),
])
def test_frame_picking_worked_example(tmp_path, fps, expected):
    path = write_video(tmp_path / "idx.mp4", 250, fps=25)
    picked = [read_index(f) for _, f in decode(path, [DecodeSpec(fps, 360, False)])]
    assert picked == expected


def test_frame_picking_30fps_pattern(tmp_path):
    path = write_video(tmp_path / "idx.mp4", 250, fps=25)
    picked = [read_index(f) for _, f in decode(path, [DecodeSpec("30", 360, False)])]
    assert len(picked) == 300 and picked[:10] == [0, 1, 2, 2, 3, 4, 5, 6, 7, 7]
    assert picked[-1] == 249


def test_short_video_two_fps_picks(tmp_path):
    path = write_video(tmp_path / "short.mp4", 20, fps=25)  # 0.8 s
    assert [read_index(f) for _, f in decode(path, [DecodeSpec("2.0", 360, False)])] == [6, 18]


def test_output_dims_truncate_long_side():
    assert output_dims(640, 360, 224) == (398, 224)
    assert output_dims(360, 640, 224) == (224, 398)
    assert output_dims(176, 144, 224) == (273, 224)
    assert output_dims(1280, 720, 288) == (512, 288)


class _CountingContainer:
    """A PyAV input container that counts the packets demuxed from it."""

    def __init__(self, container):
        self.container = container
        self.packets = 0

    def demux(self, *streams):
        for packet in self.container.demux(*streams):
            self.packets += bool(packet.size)  # the demuxer's final flush packet is empty
            yield packet

    def __getattr__(self, name):
        return getattr(self.container, name)


def test_decoder_streams_instead_of_collecting(tmp_path):
    """The first frame comes out while most of the file is still unread: a decoder that
    collected the whole video (as the reference did) first would have read every packet."""
    from hero_features.video import decode_container, open_video, probe_container

    path = write_video(tmp_path / "idx.mp4", 100, fps=25)
    with open_video(path) as container:
        counting = _CountingContainer(container)
        frames = decode_container(counting, [DecodeSpec("30", 224, True)],
                                  probe_container(container))
        branch, first = next(frames)
        read_before_first = counting.packets
        assert branch == 0 and first.shape == (224, 224, 3) and read_before_first > 0
        rest = sum(1 for _ in frames)
    assert counting.packets == 100  # every packet is counted by the end
    assert read_before_first <= 20, f"{read_before_first} of 100 packets read before frame 1"
    assert read_before_first + rest > 100  # 25 -> 30 fps


@pytest.mark.parametrize("rotation", [None, 90])
@pytest.mark.parametrize("scale_on", ["cpu", "device"])
def test_decoded_frames_are_freed_as_the_decoder_moves_on(tmp_path, rotation, scale_on):
    """A decoded frame must not outlive its use: reading a frame's display matrix the plain
    way (PyAV's side-data container) ties the two in a reference cycle that only Python's
    cyclic collector frees, hundreds of frames later. With the collector off, the frames
    alive mid-decode must stay few, rotated or not, on either scale path."""
    import av

    path = write_video(tmp_path / "v.mp4", 120, width=160, height=96, rotation=rotation)
    seen = []
    gc.collect()
    gc.disable()
    try:
        for index, (_, frame) in enumerate(decode(path, [DecodeSpec("30", 64, True)],
                                                  scale_on=scale_on)):
            if index in (60, 100):
                seen.append(sum(type(o) is av.VideoFrame for o in gc.get_objects()))
            del frame
    finally:
        gc.enable()
    assert len(seen) == 2 and max(seen) <= 8, seen


@pytest.mark.parametrize("content", [None, b"", b"hello, not a video\n" * 50])
def test_bad_files_raise_video_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError) as err:
        probe(path)
    assert err.value.stage == "open"


def test_a_playlist_cannot_make_ffmpeg_read_another_file(tmp_path):
    secret = write_video(tmp_path / "secret.mp4", 5, width=64, height=48)
    playlist = tmp_path / "evil.mp4"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
                        f"{secret}\n#EXT-X-ENDLIST\n")
    with pytest.raises(VideoError):
        list(decode(playlist, [DecodeSpec("30", 224, True)]))
    concat = tmp_path / "evil2.mp4"
    concat.write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    with pytest.raises(VideoError):
        list(decode(concat, [DecodeSpec("30", 224, True)]))


def test_each_source_frame_is_scaled_once_per_output_size(tmp_path, monkeypatch):
    """Branches of one size share the scaled frame (crop is a slice of it), and a frame the
    30 fps branch repeats is not scaled again."""
    import hero_features.video as video

    calls = []
    real = video._Scaler.__call__
    monkeypatch.setattr(video._Scaler, "__call__",
                        lambda self, frame: calls.append(frame.pts) or real(self, frame))
    path = write_video(tmp_path / "v.mp4", 50, fps=25, width=320, height=240)
    specs = [DecodeSpec("30", 224, True), DecodeSpec("0.5", 224, False),
             DecodeSpec("2.0", 288, True)]
    outputs = [branch for branch, _ in decode(path, specs)]
    assert [outputs.count(i) for i in range(3)] == [60, 1, 4]
    assert len(calls) == 50 + 4  # every frame once at 224, the 2 fps picks once at 288


@needs_ffmpeg
@pytest.mark.parametrize("rate", [25, 50])
def test_scale_first_and_fps_first_graphs_give_the_cli_bytes(tmp_path, rate):
    """Upsampling (25 -> 30 fps, scaled before the fps filter) and downsampling (50 -> 30,
    fps first) branches, decoded together, each equal the reference's single graph."""
    path = write_video(tmp_path / "v.mp4", rate * 2, fps=rate, width=320, height=240)
    info = probe(path)
    specs = [DecodeSpec("30", 224, True), DecodeSpec("0.5", 224, False),
             DecodeSpec("2.0", 288, True)]
    branches = {i: [] for i in range(len(specs))}
    for branch, frame in decode(path, specs, info):
        branches[branch].append(frame.tobytes())
    for i, spec in enumerate(specs):
        assert b"".join(branches[i]) == reference_cli_bytes(path, spec, 320, 240)
