"""Clip maths of the SlowFast and MIL-NCE pipelines (docs/fidelity.md 3.5), streamed.

The reference decodes a whole video, pads it and reshapes it into clips. Here frames arrive
one at a time (already re-timed to ``target_fps``) and each clip is emitted as soon as it is
known, with the same content as the reference would give it.

Padding only ever copies frames of the last one-second chunk, so a clip made of real frames
is final the moment its last frame arrives; only the clips that reach into the padding wait
for ``finish()``.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

NUM_FRAMES = 32
SAMPLING_RATE = 2


def parse_clip_len(text: str | float | Fraction) -> Fraction:
    """Clip length in seconds as an exact fraction: "2", "1.5", "3/2", 2 and 1.5 all work.

    The reference only takes integers or "p/q"; "1.5" is accepted here too because it
    names the same clip length.
    """
    if isinstance(text, bool):
        raise ValueError(f"clip_len must be a number of seconds, got {text!r}")
    try:
        if isinstance(text, float):
            # repr is the shortest decimal that round-trips, so 0.1 becomes 1/10
            # rather than the binary fraction nearest to 0.1.
            value = Fraction(repr(text))
        elif isinstance(text, str):
            value = Fraction(text.strip())
        else:
            value = Fraction(text)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        raise ValueError(
            f"clip_len must be a positive number of seconds such as 2, 1.5 or 3/2, "
            f"got {text!r}") from None
    if value <= 0:
        raise ValueError(f"clip_len must be positive, got {text!r}")
    return value


def clip_frames(clip_len: Fraction, target_fps: int = 30) -> int:
    """Frames per clip, L; ValueError where the reference's assert would fail."""
    p, q = clip_len.numerator, clip_len.denominator
    if (target_fps * p) % q:
        raise ValueError(
            f"clip_len {clip_len} is not a whole number of frames at {target_fps} fps")
    # The reference computes int(float(clip_len) * target_fps), which for a few lengths
    # (49/3 s: 489.99999999999994) truncates one frame short and then crashes in its
    # reshape. There is no output to match there, so the exact count is used.
    return target_fps * p // q


def max_clips(duration: float | None, clip_len: Fraction) -> int | None:
    """Clips kept by the duration trim, or None when the stream has no duration."""
    if duration is None or not duration > 0:
        return None
    # Same Python float division as the reference: 5.28 / 1.5 = 3.5200000000000005 -> 4.
    return math.ceil(duration / float(clip_len))


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    # torch <= 1.5 on the CPU (the reference's environment): step and start + step * i,
    # each rounded to float32. Newer torch mirrors the upper half from `end`; the two give
    # the same indices for every src fps below 108 (checked for clips up to 400 frames),
    # which covers every source rate the reference's tables list.
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32])
    step = (end32 - start32) / np.float32(steps - 1)
    return start32 + step * np.arange(steps, dtype=np.float32)


def temporal_indices(clip_frames: int, src_fps: int, target_fps: int = 30,
                     num_frames: int = NUM_FRAMES,
                     sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Positions of the frames fed to the model from a clip of `clip_frames` frames.

    The window is measured in *source* frames although the clip was re-timed to
    target_fps (bug 8.1), so below 30 fps the clip's tail is never seen and above it
    the last frame is repeated.
    """
    window = num_frames * sampling_rate * src_fps / target_fps
    # The reference's start is max(L - W, 0) * 0 / 1, always 0.0.
    start = 0.0
    values = _linspace_f32(start, start + window - 1, num_frames)
    return np.clip(values, 0, clip_frames - 1).astype(np.int64)


def _chunk_unit(clip_len: Fraction) -> int:
    # Seconds the padded video must be a multiple of: k for an integer clip_len, and the
    # numerator p for p/q (bug 8.5).
    return clip_len.numerator


def count_clips(n_frames: int, clip_len: Fraction, duration: float | None,
                target_fps: int = 30, min_num_features: int = 1) -> int:
    """Feature rows the reference writes for `n_frames` decoded frames (0 for none)."""
    if n_frames == 0:
        return 0
    frames_per_clip = clip_frames(clip_len, target_fps)
    unit = _chunk_unit(clip_len)
    seconds = -(-n_frames // target_fps)
    padded_seconds = -(-seconds // unit) * unit
    kept = padded_seconds * target_fps // frames_per_clip
    limit = max_clips(duration, clip_len)
    if limit is not None:
        kept = min(kept, limit)
    if kept < min_num_features:
        _short_clip_frames(kept * frames_per_clip, min_num_features)
        return min_num_features
    return kept


def _short_clip_frames(total: int, min_num_features: int) -> int:
    if total % min_num_features:
        raise ValueError(
            f"{total} frames cannot be split into min_num_features={min_num_features} "
            f"equal clips (the reference crashes here too)")
    return total // min_num_features


class ClipSampler:
    """Turns a stream of re-timed frames into the reference's (32, H, W, 3) clips.

    Holds at most the current clip's frames and the current one-second chunk (the only
    frames padding can copy). With min_num_features > 1 it also holds the first
    min_num_features clips, because a video that ends up shorter than that is re-cut
    into clips of another length (bug 8.8).
    """

    def __init__(self, clip_len: Fraction, src_fps: int, duration: float | None,
                 target_fps: int = 30, min_num_features: int = 1, stack=np.stack):
        if min_num_features < 1 or target_fps % min_num_features:
            # The reference asserts target_fps % min_num_features == 0 at start-up.
            raise ValueError(
                f"min_num_features must be a divisor of target_fps={target_fps}, "
                f"got {min_num_features}")
        self.clip_len = parse_clip_len(clip_len)
        self.src_fps = src_fps
        self.target_fps = target_fps
        self.min_num_features = min_num_features
        # The 32 picked frames -> one clip; np.stack for arrays, the decoder's own for its
        # device-path picks (producer.py).
        self.stack = stack
        self.clip_frames = clip_frames(self.clip_len, target_fps)
        self.limit = max_clips(duration, self.clip_len)
        self.n_frames = 0
        self._picks = temporal_indices(self.clip_frames, src_fps, target_fps)
        self._clip: list[np.ndarray] = []
        self._chunk: list[np.ndarray] = []
        self._pending: list[list[np.ndarray]] = []
        self._completed = 0  # clips whose frames are all real, emitted or pending
        self._emitted = 0
        self._finished = False

    @property
    def frames_held(self) -> int:
        """Frame references held (frames shared by clip and chunk are counted twice)."""
        return len(self._clip) + len(self._chunk) + sum(map(len, self._pending))

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        """Add the next frame; return the clips it completes (usually none or one)."""
        self.n_frames += 1
        if self.limit is not None and self._completed >= self.limit:
            return []  # past the duration trim: nothing later is ever emitted
        if len(self._chunk) == self.target_fps:
            self._chunk = []
        self._chunk.append(frame)
        self._clip.append(frame)
        if len(self._clip) < self.clip_frames:
            return []
        self._pending.append(self._clip)
        self._clip = []
        self._completed += 1
        if self._completed == self.limit:
            self._chunk = []  # no padding can reach a kept clip any more
        if self._completed < self.min_num_features:
            return []
        return self._flush()

    def finish(self) -> list[np.ndarray]:
        """Return the remaining clips: those that reach into the padding, or the re-cut
        short video. An empty stream, or a second call, gives []."""
        if self.n_frames == 0 or self._finished:
            return []
        self._finished = True
        self._pending.extend(self._padded_clips())
        self._clip, self._chunk = [], []
        if self._emitted + len(self._pending) >= self.min_num_features:
            return self._flush()
        # Fewer clips than min_num_features; nothing was emitted yet, so the pending
        # clips are all the kept frames, re-cut into min_num_features equal clips.
        frames = [f for clip in self._pending for f in clip]
        self._pending = []
        length = _short_clip_frames(len(frames), self.min_num_features)
        picks = temporal_indices(length, self.src_fps, self.target_fps)
        return [self._gather(frames[i * length:(i + 1) * length], picks)
                for i in range(self.min_num_features)]

    def _padded_clips(self) -> list[list[np.ndarray]]:
        fps, length = self.target_fps, self.clip_frames
        total = count_clips(self.n_frames, self.clip_len, None, fps)
        if self.limit is not None:
            total = min(total, self.limit)
        if self._completed >= total:
            return []
        # The last second is padded with its last frame and then repeated whole, so
        # padded position t shows frame t % fps of that completed second. The tail
        # starts at the current clip, position self._completed * length.
        last_second = self._chunk + [self._chunk[-1]] * (fps - len(self._chunk))
        tail = self._clip + [last_second[t % fps]
                             for t in range(self.n_frames, total * length)]
        return [tail[i:i + length] for i in range(0, len(tail), length)]

    def _flush(self) -> list[np.ndarray]:
        clips = [self._gather(clip, self._picks) for clip in self._pending]
        self._emitted += len(clips)
        self._pending = []
        return clips

    def _gather(self, frames: list, picks: np.ndarray):
        return self.stack([frames[i] for i in picks])
