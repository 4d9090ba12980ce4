"""Decoded units through shared memory: same bytes as in-process decoding, slots never
overwritten before the reader is done, oversized units through the pipe, nothing left in
/dev/shm."""
from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from hero_features.config import DecodeSettings, InputGroup
from hero_features.messages import End, Info, Units
from hero_features.producer import decode_video_units
from hero_features.transport import SLOT_BYTES, SLOTS, shm_room
from hero_features.workers import DecodePool

DATA = Path(__file__).parent / "data" / "videos"
CLIPS = (InputGroup(("slowfast",), "clip", 224, True),)
FRAMES = (InputGroup(("resnet",), "frame", 224, False),)
SETTINGS = DecodeSettings(clip_len=Fraction(2))
MANY = 3 * SLOTS + 1  # more messages than a worker has slots


def numbered_units(video_id, path, groups, settings, active):
    """Units whose every byte is their message number, so a reused slot would show."""
    yield Info(video_id, None)
    for i in range(MANY):
        yield Units(video_id, 0, np.full((2, 64, 64, 3), i, np.uint8))
    yield End(video_id, 1.0)


def oversized_units(video_id, path, groups, settings, active):
    yield Info(video_id, None)
    yield Units(video_id, 0, np.full((SLOT_BYTES // 3 + 1, 1, 1, 3), 7, np.uint8))
    yield Units(video_id, 0, np.full((1, 8, 8, 3), 9, np.uint8))
    yield End(video_id, 1.0)


def _shm_files() -> set:
    """Names in /dev/shm. An unreadable /dev/shm fails the test: an empty set would make every
    "nothing left behind" check below pass without looking."""
    try:
        return set(os.listdir("/dev/shm"))
    except OSError as exc:
        pytest.fail(f"cannot list /dev/shm, so leftovers cannot be checked: {exc}")


def _arena_ranges(pool) -> list:
    ranges = []
    for arena in pool.arenas:
        whole = np.frombuffer(arena.shm.buf, np.uint8)
        start = whole.__array_interface__["data"][0]
        ranges.append((start, start + whole.nbytes))
        del whole  # no view may outlive the pool's mapping
    return ranges


def _in_arena(ranges, array: np.ndarray) -> bool:
    address = array.__array_interface__["data"][0]
    return any(start <= address < end for start, end in ranges)


def _video() -> Path:
    videos = sorted(DATA.glob("*.mp4"))
    if not videos:
        pytest.skip("no sample video")
    return videos[0]


@pytest.mark.parametrize("groups", [CLIPS, FRAMES], ids=["clips", "frames"])
def test_units_through_shared_memory_match_in_process_decoding(groups):
    video = _video()
    expected = [m.units.copy() for m in decode_video_units(0, str(video), groups, SETTINGS)
                if m.kind == "units"]
    pool = DecodePool(1, groups, SETTINGS)
    assert pool.arenas, pool.transport_note
    ranges = _arena_ranges(pool)
    got, in_place = [], 0
    for message in pool.messages([(0, str(video), (0,))]):
        if message.kind == "units":
            in_place += _in_arena(ranges, message.units)  # read in place, not unpickled
            got.append(message.units.copy())
    assert len(got) == len(expected) > 0
    assert in_place == len(got)
    for a, b in zip(got, expected):
        assert a.dtype == np.uint8 and np.array_equal(a, b)


def test_a_slot_is_not_reused_before_the_reader_asks_for_the_next_message():
    pool = DecodePool(1, FRAMES, SETTINGS, decode_fn=numbered_units)
    names = {arena.name.lstrip("/") for arena in pool.arenas}
    assert names and names <= _shm_files()  # the check below can see the arenas
    values = []
    for message in pool.messages([(0, "unused", (0,))]):
        if message.kind == "units":
            time.sleep(0.02)  # a writer ignoring the hand-back would overwrite this slot now
            assert len(np.unique(message.units)) == 1
            values.append(int(message.units[0, 0, 0, 0]))
    assert values == list(range(MANY))
    # The arenas are gone once the pool is closed (messages() closes it).
    assert not names & _shm_files()


def test_units_larger_than_a_slot_go_through_the_pipe():
    pool = DecodePool(1, FRAMES, SETTINGS, decode_fn=oversized_units)
    ranges = _arena_ranges(pool)
    seen = [(_in_arena(ranges, m.units), m.units.nbytes, int(m.units.max()))
            for m in pool.messages([(0, "unused", (0,))]) if m.kind == "units"]
    assert seen == [(False, (SLOT_BYTES // 3 + 1) * 3, 7), (True, 8 * 8 * 3, 9)]


def test_without_shared_memory_everything_goes_through_the_pipe():
    pool = DecodePool(1, FRAMES, SETTINGS, decode_fn=numbered_units, shared_memory=False)
    assert pool.arenas == [] and pool.transport_note is None
    units = [m.units for m in pool.messages([(0, "unused", (0,))]) if m.kind == "units"]
    # Kept after the loop and still intact: nothing was read in place and reused.
    assert [int(u[0, 0, 0, 0]) for u in units] == list(range(MANY))


def test_too_little_room_in_dev_shm_is_reported_not_crashed_into(tmp_path):
    assert shm_room(1, str(tmp_path)) is None or "MiB free" in shm_room(1, str(tmp_path))
    reason = shm_room(10 ** 9, str(tmp_path))  # more arenas than any disk holds
    assert reason is not None and "MiB free" in reason and "wanted" in reason
    assert "unavailable" in shm_room(1, str(tmp_path / "missing"))


def test_a_full_dev_shm_at_start_means_pipes_and_a_note_not_a_crash(monkeypatch):
    import errno

    import hero_features.transport as transport

    created = []
    real = transport.shared_memory.SharedMemory

    def tracking(*args, **kwargs):
        segment = real(*args, **kwargs)
        name = segment.name.lstrip("/")
        assert name in _shm_files()  # so the check that it is gone can see it
        created.append(name)
        return segment

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transport.shared_memory, "SharedMemory", tracking)
    monkeypatch.setattr(transport.os, "posix_fallocate", full)
    pool = DecodePool(2, FRAMES, SETTINGS, decode_fn=numbered_units)
    assert pool.arenas == [] and "No space left" in pool.transport_note
    assert created and not set(created) & _shm_files()  # the half-made arena is gone
    units = [m.units for m in pool.messages([(0, "unused", (0,))]) if m.kind == "units"]
    assert [int(u[0, 0, 0, 0]) for u in units] == list(range(MANY))


def test_an_arena_is_reserved_up_front():
    from hero_features.transport import Arena, arena_bytes

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    arena = Arena()
    try:
        stat = os.stat(os.path.join("/dev/shm", arena.name.lstrip("/")))
        assert stat.st_blocks * 512 >= arena_bytes()  # pages allocated, not a sparse file
    finally:
        arena.close()
