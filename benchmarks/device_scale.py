#!/usr/bin/env python3
"""Decode-worker CPU per video-second: scaling on the CPU graph vs handing YUV to the device.

For a slowfast + resnet run (clip_len 2: slowfast at 30 fps, 224 centre crop; resnet at
0.5 fps, 398x224 uncropped; both share the 224 scale), on a 720p and a 360p H.264 video:

* graph path (today's CPU work): decode every frame, and for each frame the run selects,
  the per-size graph `buffer -> scale=W:H:flags=bilinear -> format=pix_fmts=rgb24 ->
  buffersink`, the rgb24 copy out of the frame, the centre crop (slowfast) and the copy of
  what is handed over (the crop; the whole frame for resnet's frames);
* device path, worker side: decode every frame, and for each selected frame copy its Y, U,
  V planes into a hand-over buffer (what goes into the shared-memory transport);
* device work: `DeviceScaler` on those planes (crop window for slowfast's frames, whole
  frame for resnet's), counted apart. Here it runs on the CPU (one torch thread), so its
  cost is printed separately; on a GPU host it is the GPU's work.

Frame selection: the fps filter's nearest-timestamp rule at 30 and 0.5 fps (on these 30 fps
sources slowfast keeps every frame; resnet's frames are among them). CPU time is this
process's user+sys (decoder threads included); `--threads 1` (default) decodes on one thread
so that the device work, timed on the main thread, can be told apart. Both paths run in one
process, interleaved (the order alternates per repeat); medians of `--repeats`.

The last line reads `decode CPU ratio 720p X.XX 360p Y.YY` (graph path / device path,
worker side). Videos: lavfi testsrc2 + a moving box, x264 ultrafast crf 30 (as
make_videos.py), cached in $HERO_BENCH_VIDEOS or ~/.cache/hero-features/bench-videos.

    python benchmarks/device_scale.py [--seconds 20] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import av.filter
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_videos  # noqa: E402

from hero_features.swsplan import unsupported_reason, yuv_planes  # noqa: E402
from hero_features.video import crop_offset, output_dims  # noqa: E402

SIZE = 224
SLOWFAST_RATE, RESNET_RATE = 30.0, 0.5  # slowfast's target fps; resnet's 1 / clip_len (2)
RATES = (SLOWFAST_RATE, RESNET_RATE)
SOURCE_FPS = 30
BATCH = 32  # frames per device call


def make_video(width: int, height: int, seconds: int, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"testsrc2_{width}x{height}_{SOURCE_FPS}fps_{seconds}s_crf30.mp4"
    if out.exists() and out.stat().st_size > 0:
        return out
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not on PATH (needed to make the test videos)")
    box = max(16, height * 192 // 720)
    graph = (f"[0][1]overlay=x='mod(t*{width // 4}\\,W-w)':y='(H-h)/2+{height * 220 // 720}"
             f"*sin(t*1.3)',format=yuv420p[v]")
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial.mp4")
    rate = f"rate={SOURCE_FPS}:duration={seconds}"
    try:
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:{rate}",
                        "-f", "lavfi", "-i", f"color=c=0x3060c0:size={box}x{box}:{rate}",
                        "-filter_complex", graph, "-map", "[v]", "-c:v", "libx264",
                        "-preset", "ultrafast", "-crf", "30", "-g", "250", str(tmp)],
                       check=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def selection(path: Path) -> tuple[dict[int, set], float]:
    """{decoded frame index: the rates that keep it}, and the video's length in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = np.array([float(frame.pts * stream.time_base)
                          for frame in container.decode(stream)])
    times -= times[0]
    length = float(times[-1]) + 1 / SOURCE_FPS
    picked: dict[int, set] = {}
    for rate in RATES:
        wanted = np.arange(int(length * rate + 1e-9)) / rate
        after = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)
        nearest = np.where(wanted - times[after - 1] <= times[after] - wanted, after - 1, after)
        for index in nearest.tolist():
            picked.setdefault(index, set()).add(rate)
    return picked, length


def _graph(stream, out_w: int, out_h: int):
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    scale = graph.add("scale", f"{out_w}:{out_h}:flags=bilinear")
    fmt = graph.add("format", "pix_fmts=rgb24")
    sink = graph.add("buffersink")
    source.link_to(scale)
    scale.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    return graph, source, sink


def _cpu() -> float:
    return time.process_time()


def run_graph_path(path: Path, picked: dict, threads: int) -> float:
    """CPU seconds: decode + per-size graph + crop + hand-over copies."""
    start = _cpu()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        out_w, out_h = output_dims(stream.codec_context.width, stream.codec_context.height, SIZE)
        x, y = crop_offset(out_w, out_h, SIZE)
        clip_slot = np.empty((SIZE, SIZE, 3), np.uint8)
        frame_slot = np.empty((out_h, out_w, 3), np.uint8)
        graph, source, sink = _graph(stream, out_w, out_h)
        for index, frame in enumerate(container.decode(stream)):
            rates = picked.get(index)
            if not rates:
                continue
            source.push(frame)
            rgb = sink.pull().to_ndarray(format="rgb24")
            np.copyto(clip_slot, rgb[y:y + SIZE, x:x + SIZE])
            if RESNET_RATE in rates:
                np.copyto(frame_slot, rgb)
        del graph
    return _cpu() - start


def run_device_path(path: Path, picked: dict, threads: int, device: str) -> tuple[float, float]:
    """(worker CPU seconds, device-work CPU seconds): decode + plane hand-over copies, and
    DeviceScaler on the handed-over planes in batches (timed apart, on the main thread)."""
    import torch

    from hero_features.devicescale import DeviceScaler

    start, device_cpu = _cpu(), 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        width, height = stream.codec_context.width, stream.codec_context.height
        out_w, out_h = output_dims(width, height, SIZE)
        x, y = crop_offset(out_w, out_h, SIZE)
        slots = [np.empty((BATCH, -(-height >> s), -(-width >> s)), np.uint8) for s in (0, 1, 1)]
        resnet_rows, filled, scalers = [], 0, {}

        def flush(key):
            nonlocal filled, device_cpu, resnet_rows
            began = time.thread_time()
            batch = [torch.from_numpy(slot[:filled]).to(device) for slot in slots]
            if key not in scalers:
                scalers[key] = (
                    DeviceScaler(width, height, key[0], key[1], key[2], out_w, out_h,
                                 crop=(x, y, SIZE, SIZE), device=device),
                    DeviceScaler(width, height, key[0], key[1], key[2], out_w, out_h,
                                 device=device))
            cropped, whole = scalers[key]
            cropped(*batch)
            if resnet_rows:
                whole(*[b[resnet_rows] for b in batch])
            if device != "cpu":
                torch.cuda.synchronize()
            device_cpu += time.thread_time() - began
            filled, resnet_rows = 0, []

        key = None
        for index, frame in enumerate(container.decode(stream)):
            rates = picked.get(index)
            if not rates:
                continue
            key = (frame.format.name, int(frame.color_range), int(frame.colorspace))
            for slot, plane in zip(slots, yuv_planes(frame)):
                np.copyto(slot[filled], plane)
            if RESNET_RATE in rates:
                resnet_rows.append(filled)
            filled += 1
            if filled == BATCH:
                flush(key)
        if filled:
            flush(key)
    return _cpu() - start - device_cpu, device_cpu


def run_decode_only(path: Path, threads: int) -> float:
    start = _cpu()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        for _ in container.decode(stream):
            pass
    return _cpu() - start


def check_first_batch(path: Path) -> None:
    """The device path's frames are the graph's (a benchmark of wrong output is no use)."""
    import torch

    from hero_features.devicescale import DeviceScaler

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        out_w, out_h = output_dims(stream.codec_context.width, stream.codec_context.height, SIZE)
        graph, source, sink = _graph(stream, out_w, out_h)
        for index, frame in zip(range(4), container.decode(stream)):
            source.push(frame)
            expected = sink.pull().to_ndarray(format="rgb24")
            scaler = DeviceScaler(frame.width, frame.height, frame.format.name,
                                  int(frame.color_range), int(frame.colorspace), out_w, out_h)
            planes = [torch.from_numpy(np.ascontiguousarray(p)) for p in yuv_planes(frame)]
            if not np.array_equal(scaler(*planes)[0].numpy(), expected):
                raise SystemExit(f"{path.name} frame {index}: device output differs from the "
                                 "graph's")
            reason = unsupported_reason(frame.format.name, frame.width, frame.height, out_w,
                                        out_h, int(frame.color_range), int(frame.colorspace))
            if reason:
                raise SystemExit(f"{path.name}: not covered by the device path: {reason}")


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="video length (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="FFmpeg decoder threads (default 1; 0 = FFmpeg's choice)")
    parser.add_argument("--device", default="cpu", help="where DeviceScaler runs (default cpu)")
    parser.add_argument("--video-dir", type=Path, default=None,
                        help="video cache folder (default $HERO_BENCH_VIDEOS or "
                             "~/.cache/hero-features/bench-videos)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # device work on the CPU: one thread, timed on this one
    directory = args.video_dir or make_videos.default_dir()
    print(f"machine: {machine()}; PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}), "
          f"torch {torch.__version__}, decoder threads {args.threads}, device {args.device}")
    ratios = {}
    for label, (width, height) in (("720p", (1280, 720)), ("360p", (640, 360))):
        path = make_video(width, height, args.seconds, directory)
        check_first_batch(path)
        picked, length = selection(path)
        graph_runs, worker_runs, device_runs, decode_runs = [], [], [], []
        for repeat in range(args.repeats):
            order = ("graph", "device") if repeat % 2 == 0 else ("device", "graph")
            for side in order:
                if side == "graph":
                    graph_runs.append(run_graph_path(path, picked, args.threads))
                else:
                    worker, device = run_device_path(path, picked, args.threads, args.device)
                    worker_runs.append(worker)
                    device_runs.append(device)
            decode_runs.append(run_decode_only(path, args.threads))
        graph, worker = statistics.median(graph_runs), statistics.median(worker_runs)
        device, decode = statistics.median(device_runs), statistics.median(decode_runs)
        ratios[label] = graph / worker
        print(f"{label} ({width}x{height}, {length:.1f} s, {len(picked)} frames selected): "
              f"CPU s per video-s: graph path {graph / length:.4f}, device path (worker) "
              f"{worker / length:.4f}, decode alone {decode / length:.4f}; device work on "
              f"{args.device} {device / length:.4f} (apart); runs graph "
              f"{', '.join(f'{t:.2f}' for t in graph_runs)} s, worker "
              f"{', '.join(f'{t:.2f}' for t in worker_runs)} s", flush=True)
    print(f"decode CPU ratio 720p {ratios['720p']:.2f} 360p {ratios['360p']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
