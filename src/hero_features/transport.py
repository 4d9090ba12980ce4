"""Decoded units from a decode worker to the main process through shared memory.

Each worker gets an *arena* in /dev/shm, created and owned by the main process, cut into
`SLOTS` slots of `SLOT_BYTES` (`DEVICE_SLOT_BYTES` with --scale-on device, whose units are
source-resolution YUV planes). The worker copies a units array into a free slot and sends
only a `SlotRef` (slot, shape, dtype) down its pipe; the main process reads the array in
place, copies it into a batch and hands the slot back over a second pipe. A worker whose
slots are all waiting to be read blocks until one comes back, so memory stays bounded just
as with a full pipe.

Anything else travels pickled through the pipe as before: messages other than units, units
larger than a slot (very wide uncropped frames), and every message when /dev/shm has too
little room (Docker's default is 64 MiB; launch_container.sh runs with --ipc=host).
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Optional

import numpy as np

from .messages import Units
# 32 cropped 224x224 frames (one SlowFast/S3D clip) are 4.6 MiB and 16 uncropped 16:9 frames
# at 224 lines 4.1 MiB; 8 MiB leaves room for wider frames and for CLIP RN50x4's 288.
SLOT_BYTES = 8 << 20
# --scale-on device sends source-resolution YUV planes: one 32-frame clip of 1280x720 4:2:0
# is 42 MiB; larger clips (1080p: 95 MiB) go through the pipe.
DEVICE_SLOT_BYTES = 48 << 20
SLOTS = 4
# Arenas are named after the main process, so a segment left in /dev/shm (only a SIGKILLed
# run can leave one) says whose it was: /dev/shm/hero-features-<pid>-<random>.
ARENA_PREFIX = "hero-features-"


@dataclass(frozen=True)
class SlotRef:
    """Where a units array lies in a worker's arena."""

    slot: int
    shape: tuple
    dtype: str


def slot_bytes(scale_on: str = "cpu") -> int:
    """The slot size for the units a run's decoders send (config.SCALE_ON)."""
    return DEVICE_SLOT_BYTES if scale_on == "device" else SLOT_BYTES


def arena_bytes(slot_bytes: int = SLOT_BYTES) -> int:
    return slot_bytes * SLOTS


def shm_room(workers: int, path: str = "/dev/shm", slot_bytes: int = SLOT_BYTES) -> Optional[str]:
    """None when /dev/shm can hold every worker's arena with room to spare, else why not.

    Asks for twice the arenas' size, so other users of /dev/shm keep room; `Arena` then
    reserves its pages, which catches a /dev/shm that fills up in between.
    """
    need = workers * arena_bytes(slot_bytes)
    try:
        stats = os.statvfs(path)
    except OSError as exc:
        return f"{path} unavailable ({exc.strerror})"
    free = stats.f_bavail * stats.f_frsize
    if free < 2 * need:
        return f"{path} has {free >> 20} MiB free, {2 * need >> 20} MiB wanted"
    return None


def _reserve(name: str, size: int) -> None:
    """Allocate a segment's pages now: on a full /dev/shm this is ENOSPC here, where it would
    otherwise be a SIGBUS at the first write that needs a new page, mid-run."""
    try:
        fd = os.open(os.path.join("/dev/shm", name.lstrip("/")), os.O_RDWR)
    except FileNotFoundError:  # not Linux's tmpfs layout: nothing to reserve through
        return
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


class Arena:
    """The main process's side of one worker's arena. Raises OSError when /dev/shm cannot
    hold it."""

    def __init__(self, slot_bytes: int = SLOT_BYTES) -> None:
        self.slot_bytes = slot_bytes
        self.shm = shared_memory.SharedMemory(
            name=f"{ARENA_PREFIX}{os.getpid()}-{secrets.token_hex(4)}", create=True,
            size=arena_bytes(slot_bytes))
        self.name = self.shm.name
        try:
            _reserve(self.name, arena_bytes(slot_bytes))
        except OSError:
            self.close()
            raise

    def view(self, ref: SlotRef) -> np.ndarray:
        """The array in place: valid until its slot is handed back."""
        return np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=self.shm.buf,
                          offset=ref.slot * self.slot_bytes)

    def close(self) -> None:
        try:
            self.shm.close()
        except BufferError:  # a view is still referenced somewhere; the unlink still frees it
            pass
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


class SlotWriter:
    """The worker's side: put units into free slots, take slots back as they are released."""

    def __init__(self, arena_name: str, credits, slot_bytes: int = SLOT_BYTES) -> None:
        self.slot_bytes = slot_bytes
        self.shm = shared_memory.SharedMemory(name=arena_name)
        self.credits = credits  # read end of the pipe the main process returns slots on
        self.free = list(range(SLOTS))

    def pack(self, message: tuple) -> tuple:
        """The message to send: units moved into a slot when they fit, else unchanged."""
        if not isinstance(message, Units) or message.units.nbytes > self.slot_bytes:
            return message
        units = message.units
        while self.credits.poll():
            self.free.append(self.credits.recv())
        if not self.free:
            self.free.append(self.credits.recv())  # every slot is queued: wait for the reader
        slot = self.free.pop()
        target = np.ndarray(units.shape, units.dtype, buffer=self.shm.buf,
                            offset=slot * self.slot_bytes)
        target[...] = units
        del target  # no view may outlive the mapping
        return message._replace(units=SlotRef(slot, units.shape, units.dtype.str))

    def close(self) -> None:
        try:
            self.shm.close()
        except BufferError:
            pass
