"""Clip maths (docs/fidelity.md 3.5): index tables, row counts, padding, and a property
test against a whole-video transcription of the reference."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hero_features.sampling import (
    ClipSampler, _linspace_f32, count_clips, max_clips, parse_clip_len, temporal_indices)

FPS = 30


def frame(i):
    # A 1x1 RGB frame carrying its own index, so a clip can be read back as indices.
    return np.array([[[i & 255, (i >> 8) & 255, i >> 16]]], dtype=np.uint8)


def indices_of(clip):
    c = clip[:, 0, 0, :].astype(np.int64)
    return (c[:, 0] + 256 * c[:, 1] + 65536 * c[:, 2]).tolist()


def run(n, clip_len, src_fps, duration, min_num_features=1):
    sampler = ClipSampler(parse_clip_len(clip_len), src_fps, duration,
                          min_num_features=min_num_features)
    pushed = []
    for i in range(n):
        pushed += sampler.push(frame(i))
    return pushed, sampler.finish()


def run_all(*args, **kwargs):
    pushed, finished = run(*args, **kwargs)
    return [indices_of(c) for c in pushed + finished]


# --- parse_clip_len / max_clips ---------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("2", Fraction(2)), (2, Fraction(2)), ("1.5", Fraction(3, 2)), (1.5, Fraction(3, 2)),
    ("3/2", Fraction(3, 2)), (" 6/4 ", Fraction(3, 2)), (0.1, Fraction(1, 10)),
    (Fraction(5, 2), Fraction(5, 2)),
])
def test_parse_clip_len(text, expected):
    assert parse_clip_len(text) == expected


@pytest.mark.parametrize("text", [
    "0", "-1", "-3/2", 0, -2.0, "", "abc", "3 / 2", "1/0", "nan", "inf",
    float("nan"), float("inf"), True, None])
def test_parse_clip_len_rejects(text):
    with pytest.raises(ValueError, match="clip_len"):
        parse_clip_len(text)


@pytest.mark.parametrize("clip_len, min_num_features", [
    ("5/4", 1),   # 30 * 5 / 4 is not a whole number of frames
    ("1/60", 1),
    ("2", 4),     # the reference asserts target_fps % min_num_features == 0
    ("2", 0),
])
def test_sampler_rejects_what_the_reference_asserts(clip_len, min_num_features):
    with pytest.raises(ValueError):
        ClipSampler(parse_clip_len(clip_len), 25, None, min_num_features=min_num_features)


def test_max_clips_uses_python_float_division():
    assert max_clips(5.28, Fraction(3, 2)) == 4     # 5.28 / 1.5 = 3.5200000000000005
    assert max_clips(4.5, Fraction(3, 2)) == 3
    assert max_clips(4.004, Fraction(2)) == 3
    assert max_clips(2.0, Fraction(3, 2)) == 2
    assert max_clips(None, Fraction(2)) is None
    assert max_clips(-1.0, Fraction(2)) is None     # ffprobe gave no duration
    assert max_clips(0.0, Fraction(2)) is None


# --- temporal sampling tables (docs/fidelity.md 3.5) ----------------------------------------

FULL_TABLE = {
    (23, 60): [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 17, 18, 20, 21, 23, 24, 26, 27, 29, 31,
               32, 34, 35, 37, 38, 40, 41, 43, 44, 46, 48],
    (24, 60): [0, 1, 3, 4, 6, 8, 9, 11, 12, 14, 16, 17, 19, 21, 22, 24, 25, 27, 29, 30, 32,
               34, 35, 37, 38, 40, 42, 43, 45, 46, 48, 50],
    (25, 60): [0, 1, 3, 5, 6, 8, 10, 11, 13, 15, 16, 18, 20, 21, 23, 25, 27, 28, 30, 32, 33,
               35, 37, 38, 40, 42, 43, 45, 47, 48, 50, 52],
    (25, 45): [0, 1, 3, 5, 6, 8, 10, 11, 13, 15, 16, 18, 20, 21, 23, 25, 27, 28, 30, 32, 33,
               35, 37, 38, 40, 42, 43, 44, 44, 44, 44, 44],
    (50, 60): [0, 3, 6, 10, 13, 17, 20, 23, 27, 30, 34, 37, 40, 44, 47, 51, 54, 57]
              + [59] * 14,
}


@pytest.mark.parametrize("key", sorted(FULL_TABLE))
def test_full_table_rows(key):
    src_fps, length = key
    assert temporal_indices(length, src_fps).tolist() == FULL_TABLE[key]


def test_partial_table_rows():
    def picks(src_fps, length):
        return temporal_indices(length, src_fps).tolist()

    # 23 and 24 fps at 3/2: the clip_len 2 row, clamped to 44.
    for src_fps in (23, 24):
        assert picks(src_fps, 45) == [min(i, 44) for i in FULL_TABLE[src_fps, 60]]
    assert picks(23, 45)[-4:] == [43, 44, 44, 44]
    assert picks(24, 45)[-6:] == [42, 43, 44, 44, 44, 44]
    # 29 fps: steps of about 1.96.
    assert picks(29, 60)[:3] == [0, 1, 3]
    assert picks(29, 60)[-6:] == [51, 53, 54, 56, 58, 59]
    assert picks(29, 45) == picks(29, 60)[:23] + [44] * 9
    assert picks(29, 45)[21:23] == [41, 43]
    # 30 fps: every other frame.
    assert picks(30, 60) == list(range(0, 60, 2)) + [59, 59]
    assert picks(30, 45) == list(range(0, 45, 2)) + [44] * 9
    # 50 fps at 3/2.
    assert picks(50, 45) == FULL_TABLE[50, 60][:13] + [44] + [44] * 18
    # 60 fps: steps of 4.
    assert picks(60, 60) == list(range(0, 41, 4)) + [45, 49, 53, 57] + [59] * 17
    assert picks(60, 45) == list(range(0, 41, 4)) + [44] + [44] * 20
    # Bug note 8.1: how often the clip's last frame is used.
    assert picks(60, 60).count(59) == 17 and picks(60, 45).count(44) == 21
    assert picks(30, 45).count(44) == 10


def test_both_torch_linspace_formulas_give_the_same_indices():
    # Modern torch uses the symmetric formula, ours is torch <= 1.5's start + step * i.
    for src_fps in range(1, 108):
        end = 64 * src_fps / 30 - 1
        for length in (30, 45, 60, 75, 90, 150):
            theirs = torch.linspace(0.0, end, 32).clamp(0, length - 1).long().numpy()
            assert temporal_indices(length, src_fps).tolist() == theirs.tolist()


def test_formula_choice_shows_only_at_unusual_rates():
    # 108 fps in a 200-frame clip: pick 25 is 184 with torch <= 1.5 (ours) and 185 with
    # newer torch; pick 15 is 110 in float32 where float64 would give 111.
    picks = temporal_indices(200, 108).tolist()
    assert picks[15] == 110 and picks[25] == 184
    assert torch.linspace(0.0, 64 * 108 / 30 - 1, 32).long()[25].item() == 185


def test_old_torch_linspace_slow_pathway():
    # docs/fidelity.md 2: torch <= 1.5 gives 30 where newer torch gives 31.
    assert _linspace_f32(0, 31, 8).astype(np.int64).tolist() == [0, 4, 8, 13, 17, 22, 26, 30]


# --- row counts (the reference's worked example and the parity goldens) ----------------

@pytest.mark.parametrize("n, duration, clip_len, rows", [
    (300, 10.0, "2", 5), (300, 10.0, "3/2", 7),        # worked example 2.8
    (24, 0.8, "2", 1), (24, 0.8, "3/2", 1),            # 0.8 s video
    (24, None, "3/2", 2), (24, None, "2", 1),          # ... without a stream duration
    (158, 5.28, "2", 3), (158, 5.28, "3/2", 4),        # bigbuckbunny: round(5.28 * 30)
    (300, 10.0, "2", 5), (300, 10.0, "3/2", 7),        # bikes, v01
    (120, 4.004, "2", 2), (120, 4.004, "3/2", 3),      # carphone, 29.97 fps
    (60, 2.0, "2", 1), (60, 2.0, "3/2", 2),            # v07
    (0, 10.0, "3/2", 0),
])
def test_row_counts(n, duration, clip_len, rows):
    assert count_clips(n, parse_clip_len(clip_len), duration) == rows
    clips = run_all(n, clip_len, 25, duration)
    assert len(clips) == rows


def test_no_frames_gives_no_clips():
    assert ClipSampler(Fraction(3, 2), 25, 10.0).finish() == []


def test_worked_example_clip_shape_and_picks():
    pushed, finished = run(300, "2", 25, 10.0)
    assert len(pushed) == 5 and finished == []  # no padding: all emitted while streaming
    assert all(c.shape == (32, 1, 1, 3) and c.dtype == np.uint8 for c in pushed)
    assert indices_of(pushed[3]) == [180 + i for i in FULL_TABLE[25, 60]]


# --- padding content --------------------------------------------------------------------

def test_last_second_is_repeated_whole():
    # 10 s at 3/2 without a duration: 12 padded seconds, 8 clips. At 30 src fps the picks
    # are 0, 2, ..., 44 then 44, so they show every other frame of the clip.
    clips = run_all(300, "3/2", 30, None)
    picks = temporal_indices(45, 30)
    assert len(clips) == 8
    seventh = list(range(270, 300)) + list(range(270, 285))
    eighth = list(range(285, 300)) + list(range(270, 300))
    assert clips[6] == [seventh[i] for i in picks]
    assert clips[7] == [eighth[i] for i in picks]
    # The duration trim drops the eighth clip.
    assert run_all(300, "3/2", 30, 10.0) == clips[:7]


def test_finish_twice_gives_nothing_more():
    sampler = ClipSampler(Fraction(3, 2), 25, None)
    pushed = [clip for i in range(50) for clip in sampler.push(frame(i))]
    assert len(pushed) == 1 and len(sampler.finish()) == 1
    assert sampler.finish() == []


def test_last_frame_then_last_second_padding():
    # 280 frames, clip_len 3: frames pad with frame 279 to 300, then the (already padded)
    # last second is repeated twice to reach 12 s. At 45 src fps the window is 96 frames,
    # clamped to the 90-frame clip.
    clips = run_all(280, "3", 45, None)
    picks = temporal_indices(90, 45)
    last_second = list(range(270, 280)) + [279] * 20
    assert len(clips) == 4
    assert clips[2] == [180 + i for i in picks]
    assert clips[3] == [last_second[i % 30] for i in picks]


def test_min_num_features_recuts_short_video():
    # 1.2 s, clip_len 2, trimmed to 1 clip of 60 (36 real frames), re-cut into 2 clips of
    # 30 frames each (bug 8.8).
    clips = run_all(36, "2", 30, 1.2, min_num_features=2)
    frames = list(range(36)) + [35] * 24
    picks = temporal_indices(30, 30)
    assert clips == [[frames[i] for i in picks], [frames[30 + i] for i in picks]]


def test_min_num_features_that_the_reference_cannot_split():
    # One 45-frame clip cannot become 2 equal clips; the reference's reshape fails too.
    with pytest.raises(ValueError, match="min_num_features"):
        run(30, "3/2", 25, 1.0, min_num_features=2)
    with pytest.raises(ValueError, match="min_num_features"):
        count_clips(30, Fraction(3, 2), 1.0, min_num_features=2)


# --- property test against a whole-video transcription of the reference -----------------

def reference_clips(n, clip_len, src_fps, duration, min_num_features):
    """preprocessing.py of the reference, on a whole array (docs/fidelity.md 3.5)."""
    x = np.stack([frame(i) for i in range(n)])
    x = np.concatenate([x, np.repeat(x[-1:], -n % FPS, axis=0)])
    seconds = x.reshape(-1, FPS, *x.shape[1:])
    p, q = clip_len.numerator, clip_len.denominator
    assert (FPS * p) % q == 0
    seconds = np.concatenate([seconds, np.repeat(seconds[-1:], -len(seconds) % p, axis=0)])
    clips = seconds.reshape(-1, int(float(clip_len) * FPS), *x.shape[1:])
    if duration is not None and duration > 0:
        clips = clips[:math.ceil(duration / float(clip_len))]
    if len(clips) < min_num_features:
        clips = clips.reshape(min_num_features, -1, *x.shape[1:])  # ValueError if uneven
    length = clips.shape[1]
    end = 0.0 + 32 * 2 * src_fps / FPS - 1
    picks = torch.linspace(0.0, end, 32).clamp(0, length - 1).long().numpy()
    return [indices_of(c) for c in clips[:, picks]]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 400),
    clip_len=st.sampled_from([Fraction(1), Fraction(2), Fraction(3, 2), Fraction(5, 2),
                              Fraction(3)]),
    src_fps=st.integers(15, 60),
    duration_kind=st.sampled_from(["none", "near", "any", "unknown"]),
    offset=st.floats(-0.1, 0.1),
    min_num_features=st.sampled_from([1, 2, 3]),
)
def test_streaming_matches_whole_video_reference(n, clip_len, src_fps, duration_kind,
                                                 offset, min_num_features):
    duration = {"none": None, "unknown": -1.0, "near": n / FPS + offset,
                "any": abs(offset) * 100}[duration_kind]
    try:
        expected = reference_clips(n, clip_len, src_fps, duration, min_num_features)
    except ValueError:
        expected = ValueError

    sampler = ClipSampler(clip_len, src_fps, duration, min_num_features=min_num_features)
    length = sampler.clip_frames
    pushed = []
    for i in range(n):
        pushed += sampler.push(frame(i))
        assert sampler.frames_held <= min_num_features * length + FPS
    if expected is ValueError:
        with pytest.raises(ValueError):
            sampler.finish()
        with pytest.raises(ValueError):
            count_clips(n, clip_len, duration, FPS, min_num_features)
        return
    got = [indices_of(c) for c in pushed + sampler.finish()]
    assert got == expected
    assert count_clips(n, clip_len, duration, FPS, min_num_features) == len(expected)
    if min_num_features == 1:
        # Clips of real frames leave while streaming; only padded ones wait for finish().
        limit = max_clips(duration, clip_len)
        real = n // length
        assert len(pushed) == (real if limit is None else min(real, limit))


# --- memory bound -----------------------------------------------------------------------

@pytest.mark.parametrize("clip_len", ["3/2", "2"])
def test_memory_is_bounded(clip_len):
    sampler = ClipSampler(parse_clip_len(clip_len), 25, None)
    bound = sampler.clip_frames + FPS
    small = np.zeros((1, 1, 3), dtype=np.uint8)
    emitted = 0
    for _ in range(10_000):
        emitted += len(sampler.push(small))
        assert sampler.frames_held <= bound
    emitted += len(sampler.finish())
    assert sampler.frames_held == 0
    assert emitted == count_clips(10_000, parse_clip_len(clip_len), None)


def test_nothing_is_kept_past_the_trim():
    sampler = ClipSampler(Fraction(2), 25, 4.0)
    for i in range(3000):
        sampler.push(frame(i))
    assert sampler.frames_held == 0
    assert sampler.finish() == []
