"""The device scaler gives the CPU decode graph's bytes: libswscale's bilinear scale + rgb24.

Reference: PyAV's own FFmpeg graph `buffer -> [autorotate filters] -> scale=W:H:flags=bilinear
-> format=pix_fmts=rgb24 -> buffersink`, frame by frame, with the centre crop done by slicing
(what the CPU path runs). Device: `DeviceScaler` on the same decoded frames' YUV planes, on
the CPU. Every comparison is np.array_equal on whole frames.
"""
from __future__ import annotations


import itertools
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import av.filter
import numpy as np
import pytest
import torch

from hero_features.devicescale import DeviceScaler, cached_scaler
from hero_features.swsplan import (PIX_FMTS, plan_for, quarter_turn, unsupported_reason,
                                   yuv_planes)
from hero_features.video import crop_offset, display_matrix, output_dims, rotation_filters

from conftest import VIDEOS

FRAMES = 3  # per video: enough to cover I and P frames, few enough to stay fast
# The five models' decode geometries: short side 224 centre-cropped (slowfast, mil-nce,
# clip-vit) and uncropped (resnet), 288 centre-cropped (clip-rn50x4); each size is checked
# both uncropped and cropped.
SIZES = (224, 288)

# name -> (lavfi source, width, height, encoder, pixel format, display rotation, colour tags)
SYNTHETIC = {
    "mandelbrot_320x240": ("mandelbrot", 320, 240, "libx264", "yuv420p", None, {}),
    "testsrc2_odd_321x241": ("testsrc2", 321, 241, "ffv1", "yuv420p", None, {}),
    "mandelbrot_odd_175x143": ("mandelbrot", 175, 143, "ffv1", "yuv420p", None, {}),
    "testsrc2_portrait_240x320": ("testsrc2", 240, 320, "libx264", "yuv420p", None, {}),
    "testsrc2_rotated_90": ("testsrc2", 320, 240, "libx264", "yuv420p", -90, {}),
    "testsrc2_rotated_180": ("testsrc2", 320, 240, "libx264", "yuv420p", 180, {}),
    "testsrc2_rotated_270": ("testsrc2", 320, 240, "libx264", "yuv420p", 90, {}),
    "testsrc2_rotated_90_portrait": ("testsrc2", 240, 320, "libx264", "yuv420p", -90, {}),
    "mandelbrot_yuvj420p_mjpeg": ("mandelbrot", 320, 240, "mjpeg", "yuvj420p", None, {}),
    "mandelbrot_full_range_h264": ("mandelbrot", 320, 240, "libx264", "yuv420p", None,
                                   {"color_range": 2}),
    "mandelbrot_bt709": ("mandelbrot", 320, 240, "libx264", "yuv420p", None,
                         {"colorspace": 1, "color_primaries": 1, "color_trc": 1}),
    "testsrc2_bt709_full_range": ("testsrc2", 320, 240, "libx264", "yuv420p", None,
                                  {"colorspace": 1, "color_range": 2}),
    # Sources whose size already is the output: swscale's unscaled SIMD converter (even
    # height), and its scaler with one-tap filters (odd height).
    "testsrc2_unscaled_398x224": ("testsrc2", 398, 224, "libx264", "yuv420p", None, {}),
    "mandelbrot_unscaled_224x224": ("mandelbrot", 224, 224, "libx264", "yuv420p", None, {}),
    "testsrc2_unscaled_288x288_rotated": ("testsrc2", 288, 288, "libx264", "yuv420p", 90, {}),
    "testsrc2_same_width_224x301": ("testsrc2", 224, 301, "ffv1", "yuv420p", None, {}),
    "mandelbrot_upscale_64x48": ("mandelbrot", 64, 48, "libx264", "yuv420p", None, {}),
    "testsrc2_yuv422p": ("testsrc2", 320, 240, "libx264", "yuv422p", None, {}),
    "testsrc2_yuv444p_bt2020_full": ("testsrc2", 320, 240, "libx264", "yuv444p", None,
                                     {"colorspace": 9, "color_range": 2}),
    "mandelbrot_yuv444p_odd": ("mandelbrot", 175, 143, "ffv1", "yuv444p", None, {}),
    "mandelbrot_yuv444p_unscaled": ("mandelbrot", 224, 224, "libx264", "yuv444p", None, {}),
}


def _make_video(path: Path, source, width, height, codec, pix_fmt, rotation, tags) -> Path:
    """FRAMES frames of an FFmpeg lavfi test source, encoded in-process with PyAV."""
    with av.open(f"{source}=size={width}x{height}:rate=25", format="lavfi") as src, \
            av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"qp": "12", "preset": "ultrafast"}
        for name, value in tags.items():
            setattr(stream.codec_context, name, value)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index, frame in enumerate(itertools.islice(src.decode(video=0), FRAMES)):
            picture = frame.reformat(format=pix_fmt)
            picture.pts = index
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tensors are small: on a busy 2-core machine torch's thread pool costs 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("devicescale")
    extension = {"libx264": "mp4", "ffv1": "mkv", "mjpeg": "avi"}
    return {name: _make_video(folder / f"{name}.{extension[args[3]]}", *args)
            for name, args in SYNTHETIC.items()}


def graph_frames(path: Path, out_w: int, out_h: int) -> list[np.ndarray]:
    """The CPU path: autorotate filters, then the bilinear scale to rgb24, in PyAV's FFmpeg."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = source = sink = None
        for frame in itertools.islice(container.decode(stream), FRAMES):
            if graph is None:
                graph = av.filter.Graph()
                source = tail = graph.add_buffer(template=stream)
                for name, args in rotation_filters(display_matrix(frame)):
                    node = graph.add(name, args) if args else graph.add(name)
                    tail.link_to(node)
                    tail = node
                for name, args in (("scale", f"{out_w}:{out_h}:flags=bilinear"),
                                   ("format", "pix_fmts=rgb24")):
                    node = graph.add(name, args)
                    tail.link_to(node)
                    tail = node
                sink = graph.add("buffersink")
                tail.link_to(sink)
                graph.configure()
            source.push(frame)
            frames.append(sink.pull().to_ndarray(format="rgb24"))
    return frames


def device_frames(path: Path, out_w: int, out_h: int, crop=None, **override) -> list[np.ndarray]:
    """The device path on the CPU: the decoded frames' planes through DeviceScaler, in one
    batch (the frames of these videos share one format and set of tags)."""
    planes, tags = [], set()
    with av.open(str(path)) as container:
        for frame in itertools.islice(container.decode(video=0), FRAMES):
            turn = quarter_turn(rotation_filters(display_matrix(frame)))
            tags.add((frame.format.name, frame.width, frame.height, int(frame.color_range),
                      int(frame.colorspace), turn))
            planes.append([np.array(plane) for plane in yuv_planes(frame)])
    assert len(tags) == 1, tags
    pix_fmt, width, height, color_range, colorspace, turn = tags.pop()
    pix_fmt = override.get("pix_fmt", pix_fmt)
    color_range = override.get("color_range", color_range)
    colorspace = override.get("colorspace", colorspace)
    assert unsupported_reason(pix_fmt, width, height, out_w, out_h, color_range, colorspace,
                              turn) is None
    scaler = DeviceScaler(width, height, pix_fmt, color_range, colorspace, out_w, out_h, turn,
                          crop=crop)
    batch = [torch.from_numpy(np.stack(plane)) for plane in zip(*planes)]
    return list(scaler(*batch).numpy())


def assert_identical(ours: list[np.ndarray], theirs: list[np.ndarray], what: str,
                     frames: int = FRAMES) -> None:
    assert len(ours) == len(theirs) == frames, what
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, (what, index)
        if not np.array_equal(a, b):
            diff = np.abs(a.astype(int) - b.astype(int))
            pytest.fail(f"{what} frame {index}: {np.count_nonzero(diff.max(-1))} pixels "
                        f"differ, by up to {diff.max()}")


def assert_identical_for_every_geometry(path: Path) -> None:
    """Short side 224 and 288, uncropped and centre-cropped (the crop computed on the device
    from the window, compared with the CPU output sliced as the CPU path slices it)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    for size in SIZES:
        out_w, out_h = output_dims(width, height, size)  # from the stored size, as video.py
        expected = graph_frames(path, out_w, out_h)
        assert_identical(device_frames(path, out_w, out_h), expected, f"{path.name} {size}")
        x, y = crop_offset(out_w, out_h, size)
        assert_identical(device_frames(path, out_w, out_h, crop=(x, y, size, size)),
                         [frame[y:y + size, x:x + size] for frame in expected],
                         f"{path.name} {size} cropped")


@pytest.mark.parametrize("video", sorted(p.name for p in VIDEOS.glob("*.mp4")))
def test_sample_videos_byte_identical(video):
    assert_identical_for_every_geometry(VIDEOS / video)


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_videos_byte_identical(synthetic_videos, name):
    assert_identical_for_every_geometry(synthetic_videos[name])


def test_synthetic_videos_carry_the_formats_and_tags_they_test(synthetic_videos):
    """Guards the cases above against an encoder quietly dropping a tag or a rotation."""
    seen = {}
    for name, path in synthetic_videos.items():
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            seen[name] = (frame.format.name, int(frame.color_range), int(frame.colorspace),
                          quarter_turn(rotation_filters(display_matrix(frame))),
                          frame.width, frame.height)
    assert seen["mandelbrot_yuvj420p_mjpeg"][0] == "yuvj420p"
    assert seen["mandelbrot_full_range_h264"][1] == 2
    assert seen["mandelbrot_bt709"][2] == 1
    assert seen["testsrc2_bt709_full_range"][1:3] == (2, 1)
    assert seen["testsrc2_yuv444p_bt2020_full"][:3] in (("yuv444p", 2, 9), ("yuvj444p", 2, 9))
    assert seen["testsrc2_yuv422p"][0] == "yuv422p"
    assert seen["testsrc2_odd_321x241"][4:] == (321, 241)
    for name, turn in (("testsrc2_rotated_90", 90), ("testsrc2_rotated_180", 180),
                       ("testsrc2_rotated_270", 270), ("testsrc2_rotated_90_portrait", 90),
                       ("testsrc2_unscaled_288x288_rotated", 270)):
        assert seen[name][3] == turn, name
    assert plan_for("yuv420p", 398, 224, 398, 224).unscaled
    assert not plan_for("yuv420p", 224, 301, 224, 301).unscaled  # odd height: scaler


def test_wrong_colour_tags_change_the_bytes(synthetic_videos):
    """The colour cases above can fail: BT.601 or limited range on these sources differ."""
    limited = {"pix_fmt": "yuv420p", "color_range": 1}  # yuvj420p alone means full range
    for name, override in (("mandelbrot_bt709", {"colorspace": 2}),
                           ("mandelbrot_full_range_h264", limited)):
        path = synthetic_videos[name]
        expected = graph_frames(path, 298, 224)[0]
        assert not np.array_equal(device_frames(path, 298, 224, **override)[0], expected)


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                  reason="the ffmpeg CLI (5.1) is the second oracle")


@needs_ffmpeg
@pytest.mark.parametrize("name,size", [("bigbuckbunny.mp4", 224), ("bikes.mp4", 288),
                                       ("carphone_pristine.mp4", 224),
                                       ("mandelbrot_bt709", 224), ("testsrc2_rotated_90", 224),
                                       ("mandelbrot_unscaled_224x224", 224)])
def test_spot_check_against_the_ffmpeg_cli(synthetic_videos, name, size):
    """`ffmpeg -i IN -vf scale=W:H:flags=bilinear -pix_fmt rgb24` (Debian's 5.1, the
    reference's tool) gives the same bytes where its libswscale agrees with FFmpeg 8.1's
    (everything but one-tap-luma rows, see docs/device-scale.md)."""
    path = synthetic_videos.get(name) or VIDEOS / name
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        out_w, out_h = output_dims(stream.codec_context.width, stream.codec_context.height, size)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", str(FRAMES),
                          "-vf", f"scale={out_w}:{out_h}:flags=bilinear", "-pix_fmt", "rgb24",
                          "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    cli = np.frombuffer(raw, np.uint8).reshape(-1, out_h, out_w, 3)
    ours = device_frames(path, out_w, out_h)
    assert len(cli) == len(ours)
    for index, (a, b) in enumerate(zip(ours, cli)):
        assert np.array_equal(a, b), index


def _frame_from_planes(planes, width, height, pix_fmt, color_range, colorspace):
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane, data in zip(frame.planes, planes):
        rows = np.zeros((plane.height, plane.line_size), np.uint8)
        rows[:, :plane.width] = data
        plane.update(rows.tobytes())
    frame.color_range, frame.colorspace = color_range, colorspace
    return frame


def _graph_rgb(frame, out_w: int, out_h: int) -> np.ndarray:
    graph = av.filter.Graph()
    nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                              time_base=Fraction(1, 25)),
             graph.add("scale", f"{out_w}:{out_h}:flags=bilinear"),
             graph.add("format", "pix_fmts=rgb24"), graph.add("buffersink")]
    for a, b in zip(nodes, nodes[1:]):
        a.link_to(b)
    graph.configure()
    nodes[0].push(frame)
    return nodes[-1].pull().to_ndarray(format="rgb24")


def test_noise_frames_of_random_geometries_and_tags():
    """Random planes (the hardest content for rounding) at random sizes, including
    upscales, same-size frames and 1-pixel sides, in every covered format and tag set."""
    rng = np.random.default_rng(16)
    for case in range(60):
        pix_fmt = str(rng.choice(sorted(PIX_FMTS)))
        sub_x, sub_y, _ = PIX_FMTS[pix_fmt]
        width, height = (int(v) for v in rng.integers(1, 300, 2))
        out_w, out_h = ((width, height) if case % 3 == 0
                        else tuple(int(v) for v in rng.integers(1, 400, 2)))
        color_range, colorspace = int(rng.choice([0, 1, 2])), int(rng.choice([1, 2, 5, 7, 9]))
        planes = [rng.integers(0, 256, (height, width), dtype=np.uint8)] + [
            rng.integers(0, 256, (-(-height >> sub_y), -(-width >> sub_x)), dtype=np.uint8)
            for _ in range(2)]
        what = f"{pix_fmt} {width}x{height} -> {out_w}x{out_h} range {color_range} csp {colorspace}"
        frame = _frame_from_planes(planes, width, height, pix_fmt, color_range, colorspace)
        expected = _graph_rgb(frame, out_w, out_h)
        reason = unsupported_reason(pix_fmt, width, height, out_w, out_h, color_range,
                                    colorspace)
        if reason is not None:
            assert "cascades" in reason, what  # only extreme ratios are refused
            continue
        scaler = DeviceScaler(width, height, pix_fmt, color_range, colorspace, out_w, out_h)
        assert_identical([scaler(*map(torch.from_numpy, planes))[0].numpy()], [expected], what,
                         frames=1)


def test_crop_window_is_the_cropped_whole():
    rng = np.random.default_rng(1)
    planes = [torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
              for shape in ((2, 143, 175), (2, 72, 88), (2, 72, 88))]
    whole = DeviceScaler(175, 143, "yuv420p", 0, 2, 274, 224)(*planes)
    for x, y in ((25, 0), (24, 0), (0, 0), (50, 0)):
        window = DeviceScaler(175, 143, "yuv420p", 0, 2, 274, 224, crop=(x, y, 224, 224))
        assert torch.equal(window(*planes), whole[:, y:y + 224, x:x + 224])


@pytest.mark.parametrize("pix_fmt,size,colour,rotation,words", [
    ("yuv420p10le", (640, 360, 398, 224), (0, 2), 0, "pixel format"),
    ("nv12", (640, 360, 398, 224), (0, 2), 0, "pixel format"),
    ("yuv420p", (640, 360, 398, 224), (0, 8), 0, "colour matrix"),  # YCgCo
    ("yuv420p", (640, 360, 398, 224), (0, 2), 45, "rotation"),
    ("yuv420p", (640, 360, 398, 224), (0, 2), None, "rotation"),  # quarter_turn of `rotate`
    ("yuv422p", (640, 360, 224, 398), (0, 2), 90, "transposing"),
    ("yuv420p", (4000, 300, 10, 224), (0, 2), 0, "cascades"),
])
def test_uncovered_inputs_are_named_and_refused(pix_fmt, size, colour, rotation, words):
    reason = unsupported_reason(pix_fmt, *size, *colour, rotation)
    assert reason is not None and words in reason
    width, height, out_w, out_h = size
    with pytest.raises(ValueError, match=words):
        DeviceScaler(width, height, pix_fmt, *colour, out_w, out_h, rotation)


def rotation_matrix(degrees: float) -> tuple[int, ...]:
    """A display matrix turning the picture `degrees` counter-clockwise (16.16 fixed point,
    as libavutil's av_display_rotation_set writes it)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    fixed = [round(v * 65536) for v in (c, -s, 0, s, c, 0)]
    return tuple(fixed) + (0, 0, 1 << 30)


def test_quarter_turn_names_only_the_lossless_rotations():
    turns = [quarter_turn(rotation_filters(rotation_matrix(r))) for r in (0, -90, 180, 90, -180)]
    assert turns == [0, 90, 180, 270, 180]
    assert quarter_turn(rotation_filters(None)) == 0
    assert quarter_turn(rotation_filters(rotation_matrix(30))) is None
    mirrored = (0, 65536, 0, 65536, 0, 0, 0, 0, 1 << 30)  # a turn and a flip
    assert quarter_turn(rotation_filters(mirrored)) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_bytes():
    rng = np.random.default_rng(2)
    for pix_fmt, (w, h), (ow, oh) in (("yuv420p", (1280, 720), (398, 224)),
                                      ("yuv420p", (321, 241), (298, 224)),
                                      ("yuvj420p", (224, 224), (224, 224)),
                                      ("yuv444p", (320, 240), (384, 288))):
        sx, sy = (0, 0) if pix_fmt == "yuv444p" else (1, 1)
        planes = [torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in
                  ((4, h, w), (4, -(-h >> sy), -(-w >> sx)), (4, -(-h >> sy), -(-w >> sx)))]
        cpu = DeviceScaler(w, h, pix_fmt, 0, 1, ow, oh)(*planes)
        cuda = DeviceScaler(w, h, pix_fmt, 0, 1, ow, oh, device="cuda")(
            *[p.cuda() for p in planes])
        assert torch.equal(cuda.cpu(), cpu)


def test_planes_of_another_geometry_are_refused():
    scaler = DeviceScaler(320, 240, "yuv420p", 0, 2, 298, 224)
    y = torch.zeros((1, 240, 320), dtype=torch.uint8)
    c = torch.zeros((1, 120, 160), dtype=torch.uint8)
    scaler(y, c, c)
    with pytest.raises(ValueError, match="planned"):
        scaler(y[:, :, :318], c, c)
    with pytest.raises(ValueError, match="planned"):
        scaler(y, c[:, :60], c)
    with pytest.raises(ValueError, match="planned"):
        scaler(y.int(), c, c)
    with pytest.raises(ValueError, match="outside"):
        DeviceScaler(320, 240, "yuv420p", 0, 2, 298, 224, crop=(75, 0, 224, 224))


def test_scalers_are_built_once_per_geometry():
    first = cached_scaler(320, 240, "yuv420p", 0, 2, 298, 224, 0, (37, 0, 224, 224))
    assert cached_scaler(320, 240, "yuv420p", 0, 2, 298, 224, 0, (37, 0, 224, 224)) is first
    assert cached_scaler(320, 240, "yuv420p", 0, 1, 298, 224, 0, (37, 0, 224, 224)) is not first
