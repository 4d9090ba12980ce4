"""What decoders tell the core about one video, in order. Small named tuples: picklable and
cheap through a decode worker's pipe (a units array itself travels through the worker's
shared-memory arena, transport.py, and only a SlotRef goes down the pipe).

Per video, from the decode worker (workers.py) or the inline decoder:

    Started(video_id)                         a worker took the video up (its stall clock
                                              starts; consumed by DecodePool, never passed on)
    Info(video_id, VideoInfo)                 probed: the duration the progress bar counts
    Units(video_id, group, uint8 array,       frames (n, H, W, 3) or clips (n, 32, H, W, 3)
          geometry=None)                      of decode group `group` (config.InputGroup);
                                              with --scale-on device, frames (n, P) or
                                              clips (n, 32, P) of packed YUV planes and the
                                              swsplan.DeviceGeometry that converts them
    ScaledOnCpu(video_id, reason)             --scale-on device, but (some of) this video's
                                              frames were scaled by the CPU graph: why
    Warned(video_id, stage, text)             features follow, but from a damaged stream
                                              ("decode") or not as FFmpeg 4.x gave
                                              ("fidelity")
    End(video_id, seconds)                    decoded to the end: seconds of video
    Failed(video_id, stage, reason)           instead of End: the video failed, drop its units
    Done(video_id)                            nothing more will come for this video

Producer.decode_video_units yields Info, Units, ScaledOnCpu, Warned, End and Failed; the decode workers
add Started and Done (and a Failed of their own for a decoder that stalls or dies). Each
class's `kind` names it in one word.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class Started(NamedTuple):
    video_id: int
    kind = "started"


class Info(NamedTuple):
    video_id: int
    info: Any  # video.VideoInfo (None from stand-in decoders in tests)
    kind = "info"


class Units(NamedTuple):
    video_id: int
    group: int
    units: Any  # uint8 numpy array, or a transport.SlotRef on its way through shared memory
    geometry: Any = None  # swsplan.DeviceGeometry of packed YUV units; None: rgb24 units
    kind = "units"


class ScaledOnCpu(NamedTuple):
    video_id: int
    reason: str
    kind = "scaled-on-cpu"


class Warned(NamedTuple):
    video_id: int
    stage: str
    text: str
    kind = "warning"


class End(NamedTuple):
    video_id: int
    seconds: float
    kind = "end"


class Failed(NamedTuple):
    video_id: int
    stage: str
    reason: str
    kind = "error"


class Done(NamedTuple):
    video_id: int
    kind = "done"
