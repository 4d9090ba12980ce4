"""The pieces of the CLI's timeline (hero_features.timeline) on their own.

The corpus tests (test_timeline_corpus.py) hold the whole against the ffmpeg CLI; these pin
each rule where a worked example or libavfilter itself is the oracle.
"""
from __future__ import annotations

from fractions import Fraction

import av
import av.filter
import pytest

from hero_features.timeline import (AV_TIME_BASE, FpsSelector, InputClock, OutputSync,
                                    PtsCorrection, StreamFacts, parse_rate, rescale)


def libavfilter_rate(text: str) -> Fraction:
    """The output frame rate libavfilter's own fps filter makes of `text`."""
    graph = av.filter.Graph()
    source = graph.add_buffer(width=16, height=16, format="yuv420p", time_base=Fraction(1, 1000))
    fps = graph.add("fps", f"fps={text}")
    sink = graph.add("buffersink")
    source.link_to(fps)
    fps.link_to(sink)
    graph.configure()
    for i in range(3):
        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts, frame.time_base = i * 200_000, Fraction(1, 1000)  # 200 s apart
        source.push(frame)
    return 1 / sink.pull().time_base


@pytest.mark.parametrize("clip_len", [2, 1.5, 1, 3, 0.5, 1.7, 2.5, 4 / 3, 7 / 3, 1.1, 0.3, 6.4,
                                      10, 60])
def test_rate_text_becomes_the_fraction_libavfilter_makes(clip_len):
    # the reference passed str(1 / clip_len) for the frame models
    assert parse_rate(str(1 / clip_len)) == libavfilter_rate(str(1 / clip_len))


@pytest.mark.parametrize("text", ["30", "2.0", "1.0", "0.5", "24000/1001"])
def test_other_rate_texts(text):
    assert parse_rate(text) == libavfilter_rate(text)


def test_rescale_rounds_half_away_from_zero():
    assert rescale(1, Fraction(1, 2), Fraction(1)) == 1
    assert rescale(-1, Fraction(1, 2), Fraction(1)) == -1
    assert rescale(3, Fraction(1, 25), Fraction(2, 3)) == 0  # 0.18 -> 0
    assert rescale(None, Fraction(1), Fraction(1)) is None
    assert rescale(1, Fraction(1, 3), Fraction(1), "down") == 0
    assert rescale(1, Fraction(1, 3), Fraction(1), "up") == 1


def picks(rate: str, frames: int = 250, fps: int = 25) -> list[int]:
    """Source frame indices the fps filter outputs for a zero-based constant-rate stream."""
    selector = FpsSelector(parse_rate(rate), Fraction(1, fps))
    out = [index for i in range(frames) for index, _ in selector.push(i, i)]
    return out + [index for index, _ in selector.finish(frames)]


# docs/fidelity.md 4: the reference study measured these with the ffmpeg CLI on 10 s at 25 fps.
def test_fps_filter_worked_examples():
    assert picks("0.5") == [24, 74, 124, 174, 224]
    assert picks(str(1 / 1.5)) == [18, 56, 93, 131, 168, 206, 243]
    assert picks("2.0")[:4] == [6, 18, 31, 43] and len(picks("2.0")) == 20
    thirty = picks("30")
    assert len(thirty) == 300 and thirty[:10] == [0, 1, 2, 2, 3, 4, 5, 6, 7, 7]


def test_fps_filter_starts_at_the_first_frames_rounded_time():
    selector = FpsSelector(Fraction(30), Fraction(1, 1000))
    out = [k for t in (300, 340, 380) for _, k in selector.push(t, t)]
    out += [k for _, k in selector.finish(420)]
    assert out == [9, 10, 11, 12]  # round(0.3 * 30) = 9, ends at round(0.42 * 30) = 13


def test_fps_filter_drops_frames_without_a_time_before_the_first_timed_one():
    selector = FpsSelector(Fraction(1), Fraction(1))
    out = [f for f, t in (("a", None), ("b", 0), ("c", 1)) for f, _ in selector.push(f, t)]
    out += [f for f, _ in selector.finish(2)]
    assert out == ["b", "c"]


def test_output_sync_repeats_a_late_first_frame_back_to_zero():
    sync = OutputSync()
    assert sync.push("first", 9) == ["first"] * 10
    assert sync.push("second", 10) == ["second"]
    assert sync.finish() == []


def test_output_sync_fills_a_gap_with_the_previous_frame():
    sync = OutputSync()
    out = sync.push("a", 0) + sync.push("b", 1) + sync.push("c", 5)
    # slots 2 and 3 repeat "b"; "c" (due at 5) fills 4 and 5, as fftools' cfr does
    assert out == ["a", "b", "b", "b", "c", "c"]


def test_best_effort_timestamp_prefers_dts_once_pts_look_worse():
    correction = PtsCorrection()
    # a pts going back while dts keep rising: from then on the decoder trusts dts
    times = [correction.best_effort(pts, dts) for pts, dts in
             [(0, 0), (10, 1), (5, 2), (4, 3), (20, 4)]]
    assert times == [0, 10, 2, 3, 4]
    assert PtsCorrection().best_effort(None, 7) == 7


def facts(**changes) -> StreamFacts:
    base = dict(time_base=Fraction(1, 90000), file_start=1_400_000, stream_start=126_000,
                ts_discont=True, wrap_bits=33, avg_rate=Fraction(25), reorder_depth=0,
                codec_rate=Fraction(25))
    base.update(changes)
    return StreamFacts(**base)


def run(clock: InputClock, packets, duration: int = 3600) -> list:
    """Times the filter graph sees for packets that each decode to one frame at once."""
    times = []
    for pts, dts in packets:
        stamps = clock.packet(pts, dts, duration)
        times += clock.frames([(stamps.pts, stamps.dts, duration)])
    return times


def test_mpegts_time_starts_at_the_video_when_the_audio_is_earlier():
    # the file (its audio) starts at 1.0 s, the video at 1.4 s: the CLI reads only the video,
    # so MPEG-TS time 0 is the video's start
    clock = InputClock(facts(file_start=1_000_000))
    assert run(clock, [(126_000, 126_000), (129_600, 129_600)]) == [0, 3600]


def test_other_formats_start_at_the_file_start():
    clock = InputClock(facts(ts_discont=False, wrap_bits=64, file_start=1_000_000))
    assert run(clock, [(126_000, 126_000)]) == [36_000]  # 0.4 s after the file's start


def test_restarting_timestamps_continue_where_the_stream_was():
    clock = InputClock(facts())
    second = 90_000
    packets = [(126_000 + second * i, 126_000 + second * i) for i in range(3)]
    packets += [(126_000, 126_000), (126_000 + second, 126_000 + second)]  # a file joined on
    assert run(clock, packets, duration=second) == [i * second for i in range(5)]


def test_a_small_step_back_is_not_a_discontinuity():
    clock = InputClock(facts())
    packets = [(126_000, 126_000), (129_600, 129_600), (126_000, 126_000)]
    assert run(clock, packets) == [0, 3600, 0]  # less than 0.1 s back: left as it is


def test_jumps_are_left_alone_outside_formats_that_flag_discontinuities():
    clock = InputClock(facts(ts_discont=False, wrap_bits=64, file_start=1_400_000))
    packets = [(126_000, 126_000), (129_600, 129_600), (126_000 + 3600 * 100, 126_000 + 3600 * 100)]
    assert run(clock, packets) == [0, 3600, 360_000]


def test_a_packet_from_before_a_33_bit_wrap_is_unwrapped():
    # the file starts 1 s after a wrap of its 33-bit clock; a packet stamped 0.1 s before
    # the wrap is 1.1 s before the start, not 26.5 hours after it
    clock = InputClock(facts(file_start=AV_TIME_BASE, stream_start=90_000))
    before_wrap = (1 << 33) - 9_000
    assert run(clock, [(before_wrap, before_wrap)]) == [-99_000]


def test_end_of_stream_is_the_last_frame_plus_its_duration():
    clock = InputClock(facts())
    run(clock, [(126_000, 126_000), (129_600, 129_600)])
    assert clock.end() == 7200
