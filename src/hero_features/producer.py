"""Turn one video into model inputs (frames or 32-frame clips) for every requested model.

Runs in decode worker processes, so it imports no torch. Models that need the same input
(same frame rate, size, crop and unit, e.g. slowfast + mil-nce) form one input group
(config.InputGroup) and receive one array; groups with the same frame rate and size share
one branch of the decode graph. What it yields is listed in messages.py.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .config import DecodeSettings, InputGroup
from .messages import End, Failed, Info, ScaledOnCpu, Units, Warned
from .sampling import ClipSampler
from .swsplan import DeviceGeometry
from .transport import DEVICE_SLOT_BYTES
from .video import (DecodeSpec, VideoError, VideoInfo, assess, decode_container, open_video,
                    probe_container)

FRAME_CHUNK = 16  # frames per message for frame models: small enough to stream, big enough to amortise


def frame_rate(unit: str, settings: DecodeSettings, info: VideoInfo) -> str:
    """The fps expression the reference passed to FFmpeg, as the same text."""
    if unit == "clip":
        return str(settings.target_fps)
    clip_len = float(settings.clip_len)
    rate = 1 / clip_len
    # The resnet/clip short-video rule (docs/fidelity.md 3.4): only when the duration is known.
    if info.duration is not None and 0 < info.duration < clip_len + 0.1:
        rate = 2 / max(int(info.duration), 1)
    return str(rate)


def plan_branches(groups: Sequence[InputGroup], settings: DecodeSettings, info: VideoInfo):
    """Decode specs (one per distinct fps and size) and, per group, (branch, needs numpy crop)."""
    specs: list[DecodeSpec] = []
    routes = []
    keys: dict[tuple[str, int], int] = {}
    for group in groups:
        key = (frame_rate(group.unit, settings, info), group.size)
        if key not in keys:
            # Crop inside the graph only when every group on the branch crops; otherwise the
            # branch stays uncropped and croppers slice it, which is byte-identical.
            all_crop = all(g.crop for g in groups
                           if (frame_rate(g.unit, settings, info), g.size) == key)
            keys[key] = len(specs)
            specs.append(DecodeSpec(key[0], key[1], all_crop))
        branch = keys[key]
        routes.append((branch, group.crop and not specs[branch].crop))
    return specs, routes


def centre_crop(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    y, x = int((h - size) / 2), int((w - size) / 2)
    return frame[y:y + size, x:x + size]


def decode_video_units(video_id: int, path: str, groups: Sequence[InputGroup],
                       settings: DecodeSettings, active: Optional[Sequence[int]] = None,
                       on_frame: Optional[Callable[[], None]] = None) -> Iterator[tuple]:
    """Yield the messages for one video; never raises for a bad video (it yields Failed).

    `active`: indices of the groups this video still needs (default all); group indices in
    the messages always refer to `groups`. The file is opened once, for probe and decode.
    `on_frame()` is called for every decoded frame (the stall watch's heartbeat).
    """
    active = list(range(len(groups))) if active is None else list(active)
    stage = "open"
    try:
        with open_video(path) as container:
            stage = "probe"
            info = probe_container(container, path)
            yield Info(video_id, info)
            stage = "decode"
            frames, report = yield from _units(video_id, container, info, groups, active,
                                               settings, on_frame)
            # For the progress rate only: WebM/MKV streams have no duration of their own.
            seconds = info.duration or (container.duration or 0) / 1e6
    except VideoError as exc:
        yield Failed(video_id, exc.stage, str(exc))
        return
    except Exception as exc:  # an unexpected FFmpeg/PyAV failure is still a per-video failure
        yield Failed(video_id, stage, f"{type(exc).__name__}: {exc}")
        return
    verdict = assess(report)
    if verdict is not None and verdict[0] == "failure":
        yield Failed(video_id, "decode", verdict[1])
        return
    if not frames:
        yield Failed(video_id, "decode", _too_short(report, groups, active, settings, info))
        return
    if verdict is not None:
        yield Warned(video_id, "decode", verdict[1])
    for note in report.fidelity_notes:
        yield Warned(video_id, "fidelity", note)
    yield End(video_id, seconds)


def _too_short(report, groups: Sequence[InputGroup], active: list[int],
               settings: DecodeSettings, info: VideoInfo) -> str:
    rates = sorted({frame_rate(groups[i].unit, settings, info) for i in active})
    span = f"{report.end:.3g} s" if report.end is not None else "an unknown time"
    return (f"too short: {report.frames} decoded frame(s) spanning {span} give no frame when "
            f"sampled at {' / '.join(f'{float(r):.3g}' for r in rates)} fps, as the "
            f"reference samples")


def _stack_arrays(frames: list) -> tuple[np.ndarray, None, None]:
    return np.stack(frames), None, None


def _stack_picks(picks: list) -> tuple[np.ndarray, Optional[DeviceGeometry], Optional[str]]:
    """Device-path picks -> their packed YUV planes (n, P) and the geometry they share, or,
    where the device path does not cover them all, the CPU graph's (n, H, W, 3), None and
    why not."""
    geometry = picks[0].geometry
    if geometry is not None and all(p.geometry == geometry for p in picks):
        packed = np.empty((len(picks), geometry.packed_size), np.uint8)
        for row, pick in zip(packed, picks):
            pick.packed(row)  # straight from the decoded frame into its row: one copy
        return packed, geometry, None
    reason = next((p.reason for p in picks if p.reason),
                  "the frames of one clip differ in size or colour tags")
    return np.stack([p.rgb() for p in picks]), None, reason


def _frames_per_message(geometry: Optional[DeviceGeometry]) -> int:
    # Packed source-resolution frames are big: as many as one shared-memory slot takes.
    if geometry is None:
        return FRAME_CHUNK
    return max(1, min(FRAME_CHUNK, DEVICE_SLOT_BYTES // geometry.packed_size))


def _units(video_id: int, container, info: VideoInfo, groups: Sequence[InputGroup],
           active: list[int], settings: DecodeSettings, on_frame=None):
    """Yield Units (and, on the device path, ScaledOnCpu) messages; return (frames the
    decode graph produced, DecodeReport)."""
    device = settings.scale_on == "device"
    stack = _stack_picks if device else _stack_arrays
    specs, routes = plan_branches([groups[i] for i in active], settings, info)
    samplers: list[Optional[ClipSampler]] = [
        ClipSampler(settings.clip_len, info.fps, info.duration, settings.target_fps,
                    settings.min_num_features, stack) if groups[i].unit == "clip" else None
        for i in active]
    pending: list[list] = [[] for _ in active]
    frames_seen = [0] * len(specs)
    fallback: list[str] = []  # why frames went through the CPU graph (device path), once

    def message(gi: int, stacked: tuple, clip: bool):
        units, geometry, reason = stacked
        if reason is not None and not fallback:
            fallback.append(reason)
            yield ScaledOnCpu(video_id, reason)
        yield Units(video_id, active[gi], units[None] if clip else units, geometry)

    def flush_frames(gi: int):
        if pending[gi]:
            yield from message(gi, stack(pending[gi]), False)
            pending[gi].clear()

    decoding = decode_container(container, specs, info, settings.threads, on_frame=on_frame,
                                scale_on=settings.scale_on)
    while True:
        try:
            branch, frame = next(decoding)
        except StopIteration as stop:
            report = stop.value
            break
        frames_seen[branch] += 1
        for gi, (group_branch, crop) in enumerate(routes):
            if group_branch != branch:
                continue
            size = groups[active[gi]].size
            if crop:
                unit = frame.centre_crop(size) if device else centre_crop(frame, size)
            else:
                unit = frame
            if samplers[gi] is None:
                geometry = unit.geometry if device else None
                if pending[gi] and device and pending[gi][0].geometry != geometry:
                    yield from flush_frames(gi)  # one message, one kind of unit
                pending[gi].append(unit)
                if len(pending[gi]) >= _frames_per_message(geometry):
                    yield from flush_frames(gi)
            else:
                if not device:
                    unit = np.ascontiguousarray(unit)
                for clip in samplers[gi].push(unit):
                    yield from message(gi, clip, True)
    for gi, sampler in enumerate(samplers):
        if sampler is not None:
            for clip in sampler.finish():
                yield from message(gi, clip, True)
        else:
            yield from flush_frames(gi)
    return sum(frames_seen), report
