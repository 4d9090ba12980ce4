"""Real-world timelines against the ffmpeg CLI, byte for byte (the reference ran the CLI).

Every file of tests/timeline_corpus.py, every decode spec the five pipelines use: the frames
we decode in process must be the bytes `ffmpeg -filter_complex "fps=F,scale=W:H:
flags=bilinear[,crop]" -pix_fmt rgb24 -f rawvideo` writes; the probe must give ffprobe's
numbers; and every pipeline must give the row count the reference's arithmetic gives on the
CLI's output and ffprobe's numbers.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from hero_features.config import DecodeSettings, input_groups
from hero_features.models import get_spec
from hero_features.producer import decode_video_units
from hero_features.video import DecodeSpec, decode, filter_chain, probe
from helpers import extract, failures, load
from timeline_corpus import CASES

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="the ffmpeg/ffprobe CLI (Debian's package) makes the "
                                       "corpus and is the oracle")

THIRD = str(1 / 1.5)  # the reference passed str(1 / clip_len): "0.6666666666666666"
SPECS = {
    "resnet clip_len 2": DecodeSpec("0.5", 224, False),
    "resnet clip_len 1.5": DecodeSpec(THIRD, 224, False),
    "clip-vit clip_len 1.5": DecodeSpec(THIRD, 224, True),
    "clip-rn50x4 clip_len 1.5": DecodeSpec(THIRD, 288, True),
    "slowfast / mil-nce (30 fps)": DecodeSpec("30", 224, True),
    "short-video rule (2 fps)": DecodeSpec("2.0", 224, False),
}
NAMES = [case.name for case in CASES]


@pytest.fixture(scope="module")
def corpus(timeline_corpus) -> dict[str, Path]:
    return timeline_corpus


def cli_frames(path: Path, spec: DecodeSpec, width: int, height: int) -> list[bytes]:
    """The frames the reference's command writes (plus flags=bilinear, the 2020 default)."""
    parts, label = [], "[0]"
    for i, (name, args) in enumerate(filter_chain(spec, width, height)[:-1]):
        parts.append(f"{label}{name}={args}[s{i}]")
        label = f"[s{i}]"
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-filter_complex",
                          ";".join(parts), "-map", label, "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "pipe:"], capture_output=True, check=True).stdout
    out_w, out_h = (spec.size, spec.size) if spec.crop else _dims(spec, width, height)
    size = out_w * out_h * 3
    assert len(raw) % size == 0
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def _dims(spec, width, height):
    from hero_features.video import output_dims
    return output_dims(width, height, spec.size)


_CLI_CACHE: dict = {}


def cli_cached(path: Path, spec: DecodeSpec) -> list[bytes]:
    key = (str(path), spec)
    if key not in _CLI_CACHE:
        info = probe(path)
        _CLI_CACHE[key] = cli_frames(path, spec, info.width, info.height)
    return _CLI_CACHE[key]


@pytest.mark.parametrize("name", NAMES)
def test_frames_byte_identical_to_the_cli(corpus, name):
    path = corpus[name]
    info = probe(path)
    specs = list(SPECS.values())
    ours: dict[int, list[bytes]] = {i: [] for i in range(len(specs))}
    for branch, frame in decode(path, specs, info):  # one decode for every spec
        ours[branch].append(frame.tobytes())
    for i, (what, spec) in enumerate(SPECS.items()):
        theirs = cli_cached(path, spec)
        differing = [k for k, (a, b) in enumerate(zip(ours[i], theirs)) if a != b]
        assert (len(ours[i]), differing[:5]) == (len(theirs), []), \
            f"{name}, {what}: {len(ours[i])} frames vs the CLI's {len(theirs)}"


def ffprobe_numbers(path: Path) -> tuple:
    """What the reference's probe took from ffprobe (docs/fidelity.md 3.1): stored size,
    floor(avg_frame_rate), and the stream's duration and frame count only when it has both."""
    out = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json",
                                     str(path)], capture_output=True, check=True,
                                    text=True).stdout)
    stream = next(s for s in out["streams"] if s["codec_type"] == "video")
    fps = math.floor(Fraction(stream["avg_frame_rate"]))
    try:
        nb_frames, duration = int(stream["nb_frames"]), float(stream["duration"])
    except (KeyError, ValueError):
        nb_frames = duration = None
    return stream["width"], stream["height"], fps, duration, nb_frames


@pytest.mark.parametrize("name", NAMES)
def test_probe_gives_ffprobes_numbers(corpus, name):
    info = probe(corpus[name])
    assert (info.width, info.height, info.fps, info.duration, info.nb_frames) == \
        ffprobe_numbers(corpus[name])


def reference_rows(path: Path, model: str, clip_len: Fraction) -> int:
    """Rows the reference writes, from the CLI's frame count and ffprobe's numbers alone."""
    duration = ffprobe_numbers(path)[3]
    spec = get_spec(model)
    seconds = float(clip_len)
    if spec.unit == "frame":
        rate = 1 / seconds
        if duration is not None and 0 < duration < seconds + 0.1:  # short-video rule
            rate = 2 / max(int(duration), 1)
        # the count does not depend on the picture size: one CLI run per rate
        return len(cli_cached(path, DecodeSpec(str(rate), 224, False)))
    frames = len(cli_cached(path, SPECS["slowfast / mil-nce (30 fps)"]))
    chunks = -(-frames // 30)  # pad to whole seconds of 30 frames
    p = clip_len.numerator
    chunks = -(-chunks // p) * p  # pad to a multiple of the numerator's seconds
    clips = chunks * 30 // (30 * p // clip_len.denominator)
    if duration is not None and duration > 0:  # duration trim
        clips = min(clips, math.ceil(duration / seconds))
    return clips


MODELS = ("slowfast", "mil-nce", "resnet", "clip-vit", "clip-rn50x4")


@pytest.mark.parametrize("clip_len", [Fraction(3, 2), Fraction(2)], ids=["1.5", "2"])
@pytest.mark.parametrize("name", NAMES)
def test_every_pipeline_gives_the_reference_row_count(corpus, name, clip_len):
    groups = input_groups([get_spec(m) for m in MODELS])
    counts = [0] * len(groups)
    for message in decode_video_units(0, str(corpus[name]), groups, DecodeSettings(clip_len)):
        assert message.kind != "error", message
        if message.kind == "units":
            counts[message.group] += len(message.units)
    for group, count in zip(groups, counts):
        for model in group.models:
            assert count == reference_rows(corpus[name], model, clip_len), (model, name)


def test_mpegts_rows_through_the_cli(corpus, tmp_path, synthetic_checkpoints):
    """The issue's cases: a 3 s .ts gave 1 row instead of 2, a 1.5 s .ts failed as too short
    although the CLI gives it a frame."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("ts_h264.ts", "short.ts"):
        shutil.copy(corpus[name], videos / name)
    out = tmp_path / "out"
    status = extract("--model", "resnet", "--video_path", videos, "--output_dir", out,
                     "--num_decoding_thread", "1", weights=synthetic_checkpoints)
    assert status == 0 and failures(out) == []
    assert load(out / "resnet_features" / "ts_h264.npz").shape == (2, 2048)
    assert load(out / "resnet_features" / "short.npz").shape == (1, 2048)


def test_what_ffmpeg_4_would_have_done_otherwise_is_a_warning(corpus):
    """Per-frame, mirrored orientation: we follow FFmpeg 5.1 (the test oracle) and say, per
    video, that the 2020 image's FFmpeg 4.x would have rotated otherwise."""
    groups = input_groups([get_spec("resnet")])
    notes = [(m.stage, m.text) for m in decode_video_units(
        0, str(corpus["orientation_sei.mp4"]), groups, DecodeSettings(Fraction(3, 2)))
        if m.kind == "warning"]
    assert [stage for stage, _ in notes] == ["fidelity", "fidelity"]
    assert "changes between frames" in notes[0][1] and "mirrors" in notes[1][1]
    plain = [m for m in decode_video_units(0, str(corpus["ts_h264.ts"]), groups,
                                           DecodeSettings(Fraction(3, 2)))
             if m.kind == "warning"]
    assert plain == []


def test_an_unscaled_odd_height_frame_is_a_fidelity_warning(tmp_path):
    """libswscale 8.1 (ours) and 5.1 (the CLI) convert a same-size 4:2:0 frame of odd height
    differently; the CLI shows it, and the video is flagged."""
    from videos import write_video

    def content(index, width, height):
        picture = np.zeros((height, width, 3), np.uint8)
        picture[:, : width // 2] = (255, 0, 0)  # sharp colour edges, where the rules differ
        picture[height // 2:, :, 1] = 255
        return picture

    path = write_video(tmp_path / "odd.webm", 50, codec="libvpx", width=224, height=301,
                       content=content)
    spec = DecodeSpec("30", 224, True)
    assert b"".join(cli_frames(path, spec, 224, 301)) != \
        b"".join(f.tobytes() for _, f in decode(path, [spec]))
    groups = input_groups([get_spec("resnet")])
    notes = [m.text for m in decode_video_units(0, str(path), groups,
                                                DecodeSettings(Fraction(3, 2)))
             if m.kind == "warning"]
    assert len(notes) == 1 and "odd height" in notes[0]
