"""The reference's timeline: which decoded frame becomes which output frame.

The reference ran the `ffmpeg` CLI (`-filter_complex "fps=F,scale=...,crop=..." -f rawvideo`).
Between the demuxer and the pixels, the CLI (FFmpeg 5.1's fftools, the version our tests
compare with; docs/fidelity.md) rewrites every timestamp, and the frames it writes depend on
those rewritten timestamps, not on the container's:

1. Input clock (fftools' process_input / process_input_packet / decode_video):
   - every packet is shifted by minus the file's start time (for MPEG-TS/PS, the start of
     the streams actually read, i.e. the video's, when it is later than the file's);
   - formats that flag timestamp discontinuities (MPEG-TS/PS) have jumps repaired: a packet
     more than 10 s away from where the stream was expected, or going back in time, moves the
     offset so that the stream continues where it was;
   - a 33-bit timestamp that already wrapped before the first packet is unwrapped;
   - the decoder is fed the CLI's own running dts, and a frame's time is the decoder's
     best-effort timestamp (its pts, unless pts values look less trustworthy than dts);
   - the end of the stream is the last frame's time plus its duration.
2. The `fps` filter (libavfilter's vf_fps, round=near, eof_action=round): output frame k is
   the last input frame whose time, in units of 1/F rounded to nearest, is at most k; the
   grid starts at the first frame's rounded time and ends at the rounded end of stream.
3. Output sync (fftools' do_video_out; -vsync auto is cfr for rawvideo fed by a
   -filter_complex graph): a first frame that starts after t = 0 is repeated to fill the
   gap, so the raw output always starts at the file's start.

Each class below emulates one of these steps with the same integer and floating-point
arithmetic as the C code, so the picks are the CLI's exactly. Nothing here decodes pixels.

Long on purpose: the three stages are one replay of fftools' arithmetic, each feeding the
next, and are read against the C code side by side; split, the shared constants and the
order they are applied in would be harder to check.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

AV_TIME_BASE = 1_000_000
MICROSECOND = Fraction(1, AV_TIME_BASE)
# Where a missing timestamp sorts (AV_NOPTS_VALUE is INT64_MIN in C).
NOPTS_ORDER = -(1 << 63)

# fftools defaults: -dts_delta_threshold 10 s, -dts_error_threshold 30 h.
DTS_DELTA_THRESHOLD = 10
DTS_ERROR_THRESHOLD = 3600 * 30

# libavformat's AVFMT_TS_DISCONT: the format may have timestamp discontinuities.
AVFMT_TS_DISCONT = 0x0200

# Bits of the timestamps a demuxer declares (avpriv_set_pts_info); 64 for everything not
# listed. Only formats below 64 get the CLI's unwrapping of the first packet.
_PTS_WRAP_BITS = {"mpegts": 33, "mpegtsraw": 33, "mpeg": 33, "mpegvideo": 64, "flv": 32,
                  "asf": 32, "asf_o": 32, "live_flv": 32, "kux": 32, "rm": 32, "nsv": 32,
                  "dv": 64, "vob": 33, "ivf": 64, "rtsp": 32, "sdp": 32, "rtp": 32}


def rescale(value: Optional[int], source: Fraction, target: Fraction,
            rounding: str = "near_inf") -> Optional[int]:
    """av_rescale_q(_rnd): `value` ticks of `source` in ticks of `target`, None for NOPTS.

    near_inf rounds halves away from zero (FFmpeg's default); down/up are floor/ceil.
    """
    if value is None:
        return None
    num = value * source.numerator * target.denominator
    den = source.denominator * target.numerator
    if rounding == "down":
        return num // den
    if rounding == "up":
        return -(-num // den)
    magnitude = (2 * abs(num) + den) // (2 * den)
    return magnitude if num >= 0 else -magnitude


_UINT64 = (1 << 64) - 1


def d2q(value: float, limit: int) -> Fraction:
    """av_d2q: the fraction FFmpeg makes of a double, terms at most `limit`."""
    if math.isnan(value) or value == 0:
        return Fraction(0)
    exponent = max(math.frexp(value)[1] - 1, 0)
    den = 1 << (61 - exponent)
    return reduce_fraction(math.floor(value * den + 0.5), den, limit)


def reduce_fraction(num: int, den: int, limit: int) -> Fraction:
    """av_reduce: num/den, or its best continued-fraction approximation with terms at most
    `limit` (including the C code's choice of a semi-convergent, computed with its 64-bit
    wrap-around)."""
    a0n, a0d, a1n, a1d = 0, 1, 1, 0
    negative = (num < 0) != (den < 0)
    num, den = abs(num), abs(den)
    divisor = math.gcd(num, den)
    if divisor:
        num, den = num // divisor, den // divisor
    if num <= limit and den <= limit:
        a1n, a1d, den = num, den, 0
    while den:
        x = num // den
        next_den = num - den * x
        a2n, a2d = x * a1n + a0n, x * a1d + a0d
        if a2n > limit or a2d > limit:
            if a1n:
                x = (limit - a0n) // a1n
            if a1d:
                x = min(x, (limit - a0d) // a1d)
            if (den * (2 * x * a1d + a0d)) & _UINT64 > (num * a1d) & _UINT64:
                a1n, a1d = x * a1n + a0n, x * a1d + a0d
            break
        a0n, a0d, a1n, a1d = a1n, a1d, a2n, a2d
        num, den = den, next_den
    if not a1d:
        return Fraction(0)
    return Fraction(-a1n if negative else a1n, a1d)


def parse_rate(text: str) -> Fraction:
    """The rational FFmpeg's fps filter makes of the reference's rate text ("30", "0.5",
    "0.6666666666666666" -> 2/3): av_parse_video_rate, "a:b" reduced, anything else
    evaluated as a number and turned into a fraction by av_d2q(value, 1001000)."""
    if ":" in text:
        num, den = text.split(":", 1)
        rate = reduce_fraction(int(num), int(den), 1001000)
    elif "/" in text:
        num, den = text.split("/", 1)
        rate = d2q(float(num) / float(den), 1001000)
    else:
        rate = d2q(float(text), 1001000)
    if rate <= 0:
        raise ValueError(f"invalid frame rate {text!r}")
    return rate


class PtsCorrection:
    """libavcodec's guess_correct_pts: a decoder's best-effort timestamp for each frame."""

    def __init__(self):
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = NOPTS_ORDER

    def best_effort(self, pts: Optional[int], dts: Optional[int]) -> Optional[int]:
        if dts is not None:
            self.faulty_dts += dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        if (self.faulty_pts <= self.faulty_dts or dts is None) and pts is not None:
            return pts
        return dts


@dataclass
class StreamFacts:
    """What the CLI's clock needs to know about the file and its first video stream."""

    time_base: Fraction
    file_start: Optional[int]  # AVFormatContext.start_time, microseconds
    stream_start: Optional[int]  # the video stream's start_time, in time_base
    ts_discont: bool  # AVFMT_TS_DISCONT
    wrap_bits: int
    avg_rate: Optional[Fraction]
    reorder_depth: int  # the decoder's has_b_frames when opened
    codec_rate: Optional[Fraction]  # the decoder's frame rate (for packets without duration)
    guessed_pts: bool = False  # the demuxer's pts are a newer libavformat's guesses (below)


def file_start_time(container) -> Optional[int]:
    """The file's start time (microseconds) as FFmpeg 5.1's demuxers report it.

    PyAV's newer libavformat counts an Opus track's pre-skip into that track's start time
    when it reads Matroska/WebM (its CodecDelay); 5.1 started the track at its first
    packet, 6.5 ms earlier for the usual 312-sample pre-skip. When that track is the
    earliest, the whole CLI timeline moves by those milliseconds, so it is undone here.
    """
    start = container.start_time
    if container.format.name.split(",")[0] != "matroska":
        return start
    for track in container.streams.audio:
        skip = _opus_pre_skip(track)
        if skip and track.start_time is not None:
            time_base = Fraction(track.time_base)
            first = track.start_time - rescale(skip, Fraction(1, 48000), time_base)
            first = rescale(first, time_base, MICROSECOND)
            start = first if start is None else min(start, first)
    return start


def _opus_pre_skip(track) -> int:
    context = track.codec_context
    if context.name != "opus":
        return 0
    head = bytes(context.extradata or b"")
    if len(head) < 12 or not head.startswith(b"OpusHead"):
        return 0
    return int.from_bytes(head[10:12], "little")


def stream_facts(container, stream) -> StreamFacts:
    demuxer = container.format.name.split(",")[0]
    context = stream.codec_context
    rate = context.framerate
    return StreamFacts(
        time_base=Fraction(stream.time_base),
        file_start=file_start_time(container),
        stream_start=stream.start_time,
        ts_discont=bool(container.format.flags & AVFMT_TS_DISCONT),
        wrap_bits=_PTS_WRAP_BITS.get(demuxer, 64),
        avg_rate=Fraction(stream.average_rate) if stream.average_rate else None,
        reorder_depth=int(context.reorder_depth),
        codec_rate=Fraction(rate) if rate and rate.numerator and rate.denominator else None,
        # AVI stores no presentation times. For H.264 in AVI, FFmpeg 5.1's libavformat left
        # them unset (the decoder then times frames by the CLI's dts); PyAV's newer one
        # guesses pts = dts + 1, which moves every frame. The guesses are dropped.
        guessed_pts=demuxer == "avi" and context.name == "h264",
    )


@dataclass
class _Timestamps:
    pts: Optional[int]
    dts: Optional[int]
    duration: int


class InputClock:
    """fftools' input side for one decoded video stream (all other streams unread).

    Call `packet()` for each demuxed packet before decoding it: it returns the pts/dts the
    CLI hands the decoder. Then `frames(frames, from_packet)` with the frames that decoding
    produced, which returns each frame's time (stream time base) as the filter graph sees
    it. After the last packet, `drained()` per frame the decoder still flushes out, and
    finally `end()` gives the end-of-stream time the filter graph receives.
    """

    def __init__(self, facts: StreamFacts):
        self.facts = facts
        tb = facts.time_base
        self.ts_offset = -facts.file_start if facts.file_start is not None else 0
        self.last_ts: Optional[int] = None
        self.wrap_done = False
        # InputStream state, microseconds (None = AV_NOPTS_VALUE)
        self.saw_first_ts = False
        self.dts: Optional[int] = None
        self.pts: Optional[int] = None
        self.next_dts: Optional[int] = None
        self.next_pts: Optional[int] = None
        self.dts_buffer: list[Optional[int]] = []
        self.correction = PtsCorrection()
        self._tb = tb

    # -- fftools process_input: the packet's timestamps ------------------------------------

    def packet(self, pts: Optional[int], dts: Optional[int], duration: int) -> _Timestamps:
        f = self.facts
        tb = self._tb
        if f.guessed_pts:
            pts = None
        if not self.wrap_done and f.file_start is not None and f.wrap_bits < 64:
            if (self.next_dts is None and self.ts_offset == -f.file_start and f.ts_discont
                    and f.stream_start is not None):
                # Only the streams read count for the start (the CLI discards the rest).
                start = rescale(f.stream_start, tb, MICROSECOND)
                if start > f.file_start:
                    self.ts_offset = -start
            stime = rescale(f.file_start, MICROSECOND, tb)
            half = 1 << (f.wrap_bits - 1)
            self.wrap_done = True
            if dts is not None and dts > stime + half:
                dts -= 1 << f.wrap_bits
                self.wrap_done = False
            if pts is not None and pts > stime + half:
                pts -= 1 << f.wrap_bits
                self.wrap_done = False
        shift = rescale(self.ts_offset, MICROSECOND, tb)
        if dts is not None:
            dts += shift
        if pts is not None:
            pts += shift
        pkt_dts = rescale(dts, tb, MICROSECOND)
        if (pkt_dts is not None and self.next_dts is None and f.ts_discont
                and self.last_ts is not None):
            delta = pkt_dts - self.last_ts
            if abs(delta) > DTS_DELTA_THRESHOLD * AV_TIME_BASE:
                pts, dts = self._move(delta, pts, dts)
        pkt_dts = rescale(dts, tb, MICROSECOND)
        if pkt_dts is not None and self.next_dts is not None:
            delta = pkt_dts - self.next_dts
            if f.ts_discont:
                if (abs(delta) > DTS_DELTA_THRESHOLD * AV_TIME_BASE
                        or pkt_dts + AV_TIME_BASE // 10 < max(_order(self.pts),
                                                              _order(self.dts))):
                    pts, dts = self._move(delta, pts, dts)
            else:
                if abs(delta) > DTS_ERROR_THRESHOLD * AV_TIME_BASE:
                    dts = None
                if pts is not None:
                    pts_delta = rescale(pts, tb, MICROSECOND) - self.next_dts
                    if abs(pts_delta) > DTS_ERROR_THRESHOLD * AV_TIME_BASE:
                        pts = None
        if dts is not None:
            self.last_ts = rescale(dts, tb, MICROSECOND)
        return self._before_decoding(_Timestamps(pts, dts, duration))

    def _move(self, delta: int, pts, dts):
        self.ts_offset -= delta
        step = rescale(delta, MICROSECOND, self._tb)
        return (pts - step if pts is not None else None), (dts - step if dts is not None else None)

    # -- fftools process_input_packet / decode_video: the decoder's side -------------------

    def _enter(self) -> None:
        if not self.saw_first_ts:
            f = self.facts
            if f.avg_rate:
                # C: int64 = -(int)has_b_frames * AV_TIME_BASE / double (truncated)
                self.dts = int(-f.reorder_depth * AV_TIME_BASE / float(f.avg_rate))
            else:
                self.dts = 0
            self.pts = 0
            self.saw_first_ts = True
        if self.next_dts is None:
            self.next_dts = self.dts
        if self.next_pts is None:
            self.next_pts = self.pts

    def _before_decoding(self, packet: _Timestamps) -> _Timestamps:
        self._enter()
        self._packet = packet
        if packet.dts is not None:
            self.next_dts = self.dts = rescale(packet.dts, self._tb, MICROSECOND)
        self._iteration = 0
        self._start_iteration()
        # decode_video replaces the packet's dts by the CLI's running dts
        packet.dts = rescale(self.dts, MICROSECOND, self._tb)
        return packet

    def _start_iteration(self) -> None:
        self.pts = self.next_pts
        self.dts = self.next_dts

    def _packet_duration(self, packet: Optional[_Timestamps]) -> int:
        if packet is not None and packet.duration:
            return rescale(packet.duration, self._tb, MICROSECOND)
        rate = self.facts.codec_rate
        if rate:
            # (AV_TIME_BASE * den * ticks) / num / ticks_per_frame with ticks equal to
            # ticks_per_frame for a whole progressive frame
            return (AV_TIME_BASE * rate.denominator * 2) // rate.numerator // 2
        return 0

    def _advance(self, packet: Optional[_Timestamps], frame_duration: Optional[int],
                 got_frame: bool) -> None:
        duration = self._packet_duration(packet)
        if self.dts is not None and duration:
            self.next_dts += duration
        else:
            self.next_dts = None
        if got_frame:
            if frame_duration and frame_duration > 0:
                self.next_pts += rescale(frame_duration, self._tb, MICROSECOND)
            else:
                self.next_pts += duration

    def _frame_time(self, pts: Optional[int], pkt_dts: Optional[int], eof: bool) -> Optional[int]:
        best = self.correction.best_effort(pts, pkt_dts)
        if eof and best is None and self.dts_buffer:
            best = self.dts_buffer.pop(0)
        if best is not None:
            self.next_pts = self.pts = rescale(best, self._tb, MICROSECOND)
            return best
        return pts

    def frames(self, decoded: list[tuple[Optional[int], Optional[int], Optional[int]]]
               ) -> list[Optional[int]]:
        """Times of the frames decoding the last packet gave, each (pts, pkt_dts, duration)."""
        packet = self._packet
        times = []
        for index, (pts, pkt_dts, duration) in enumerate(decoded):
            if index:
                self._start_iteration()
            times.append(self._frame_time(pts, pkt_dts, eof=False))
            self._advance(packet, duration, got_frame=True)
        if not decoded:  # the first call gave nothing: its bookkeeping still runs
            self._advance(packet, None, got_frame=False)
        return times

    def rejected(self) -> None:
        """The decoder refused the last packet (the CLI logs it and goes on)."""
        self._advance(self._packet, None, got_frame=False)

    def drained(self, pts: Optional[int], pkt_dts: Optional[int],
                duration: Optional[int]) -> Optional[int]:
        """Time of one frame flushed out of the decoder after the last packet."""
        self._enter()
        self._start_iteration()
        self.dts_buffer.append(rescale(self.dts, MICROSECOND, self._tb))
        time = self._frame_time(pts, pkt_dts, eof=True)
        self._advance(None, duration, got_frame=True)
        return time

    def end(self) -> Optional[int]:
        """The end-of-stream time (stream time base) the CLI closes the filter input with."""
        self._enter()
        self._start_iteration()
        return rescale(self.pts, MICROSECOND, self._tb)


def _order(value: Optional[int]) -> int:
    return NOPTS_ORDER if value is None else value


class FpsSelector:
    """libavfilter's fps filter (round=near, eof_action=round), on frame handles.

    `push(frame, time)` returns the frames to output now (a frame twice when it fills two
    output slots); `finish(end_time)` returns the rest. Holds at most two input frames.
    """

    def __init__(self, rate: Fraction, time_base: Fraction):
        self.out_tb = 1 / rate
        self.in_tb = time_base
        self.next_pts: Optional[int] = None
        self.held: list[tuple[object, Optional[int]]] = []
        self.status_pts: Optional[int] = None
        self.eof = False

    def push(self, frame, time: Optional[int]) -> list[tuple[object, int]]:
        self.held.append((frame, rescale(time, self.in_tb, self.out_tb)))
        out: list[tuple[object, int]] = []
        while len(self.held) == 2:
            self._step(out)
        return out

    def finish(self, end_time: Optional[int]) -> list[tuple[object, int]]:
        self.eof = True
        self.status_pts = rescale(end_time, self.in_tb, self.out_tb)
        out: list[tuple[object, int]] = []
        while self.held:
            self._step(out)
        return out

    def reset(self) -> None:
        """The CLI rebuilt its filter graph (the frame size changed): the new fps filter
        starts afresh and the frame the old one held is lost."""
        self.next_pts = None
        self.held.clear()

    def _step(self, out: list) -> None:
        if self.next_pts is None:
            if self.held[0][1] is not None:
                self.next_pts = self.held[0][1]
            else:  # "Discarding initial frame(s) with no timestamp"
                self.held.pop(0)
                return
        if ((len(self.held) == 2 and _order(self.held[1][1]) <= self.next_pts)
                or (self.eof and _order(self.status_pts) <= self.next_pts)):
            self.held.pop(0)
            return
        out.append((self.held[0][0], self.next_pts))
        self.next_pts += 1


def _llrintf(value: float) -> int:
    """llrintf: to single precision, then to the nearest integer, ties to even."""
    single = struct.unpack("f", struct.pack("f", value))[0]
    return round(single)


@dataclass
class OutputSync:
    """fftools' do_video_out for a constant-frame-rate raw output whose encoder time base
    is 1/F, fed the fps filter's output (pts counting in 1/F).

    (-vsync auto would pick "vscfr", which does not fill the time before a late first
    frame, for an output fed straight from a file with a single stream; the reference's
    output came out of a -filter_complex graph, which always gets plain cfr.)
    """

    sync_opts: int = 0
    last: object = None
    last_nb0: list = field(default_factory=lambda: [0, 0, 0])

    def push(self, frame, pts: int) -> list:
        """Frames to write for the next filtered frame."""
        sync_ipts = _encoder_time(pts)
        duration = 1.0
        delta0 = sync_ipts - self.sync_opts
        delta = delta0 + duration
        nb0, nb = 0, 1
        if delta0 < 0 and delta > 0:  # a frame a little early is clipped, not dropped
            duration += delta0
            delta0 = 0.0
        if delta < -1.1:
            nb = 0
        elif delta > 1.1:
            nb = _llrintf(delta)
            if delta0 > 1.1:
                nb0 = _llrintf(delta0 - 0.6)
        nb0 = min(nb0, nb)
        self.last_nb0 = [nb0] + self.last_nb0[:2]
        out = self._emit(nb, nb0, frame)
        self.last = frame
        return out

    def finish(self) -> list:
        """Frames the CLI writes when the filter graph reaches its end."""
        count = sorted(self.last_nb0)[1]  # mid_pred
        return self._emit(count, count, None)

    def _emit(self, nb: int, nb0: int, frame) -> list:
        out = []
        for i in range(nb):
            picture = self.last if (i < nb0 and self.last is not None) else frame
            if picture is None:
                return out
            out.append(picture)
            self.sync_opts += 1
        return out


def _encoder_time(pts: int) -> float:
    """adjust_frame_pts_to_encoder_tb for a filter time base equal to the encoder's: the
    pts plus a 2^-17 nudge away from zero (with FFSIGN(0) = -1)."""
    value = float(pts)
    return value + (1.0 if value > 0 else -1.0) / (1 << 17)
