"""Decode worker processes: one video at a time each, watched for hangs and crashes.

Every worker has its own job queue and its own result pipe, so a worker that hangs inside
native decoder code (or dies) can be killed and replaced without corrupting what the other
workers send; the video it held is reported as failed and the run goes on. Decoded units
travel through each worker's shared-memory arena (transport.py), the rest through the pipe.

--video_timeout watches decoder progress, not messages: each decoder keeps a `Heartbeat`
(the time of its last decoded frame, in shared memory) and is a stall only when that is old
while it is not waiting for the main process to take its output. With
--num_decoding_thread 0 the decoder runs in a thread of the main process under the same
watch (`inline_messages`).

Over 400 lines because the decode side's one job, a decoder watched for stalls and deaths,
needs both its ends here: the worker loop, the heartbeat it keeps, and the pool that reads
it, replaces a dead worker and reports its video.
"""
from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Callable, Iterator, Optional, Sequence

from .config import DecodeSettings, InputGroup
from .messages import Done, Failed, Info, Started, Units
from .producer import decode_video_units
from .signals import blocked, exit_text, ignore_stop_signals, start_resource_tracker
from .transport import Arena, SlotRef, SlotWriter, shm_room, slot_bytes

# A worker is not timed while it starts (a spawned interpreter importing numpy and PyAV can
# take seconds on a loaded machine); only one that never starts at all is given up on.
STARTUP_LIMIT = 120.0
INLINE_QUEUE = 8  # messages an inline decode thread may run ahead of the models


class Heartbeat:
    """How far the decoder of one video has got: written by the decoder, read by the watch.

    Four numbers, in a shared array for a worker process (time.monotonic is the system-wide
    CLOCK_MONOTONIC, so both sides read one clock) or a list for a thread: the time of its
    last progress (a decoded frame, a message handed over), whether it is waiting for the
    main process to take a message, the frames decoded so far, and its stage.
    """

    LAST, WAITING, FRAMES, STAGE = range(4)
    IDLE, OPENING, DECODING = 0.0, 1.0, 2.0

    def __init__(self, cells=None):
        self.cells = cells if cells is not None else [0.0] * 4

    def begin(self) -> None:
        """A video is taken up: opening and probing come first."""
        cells = self.cells
        cells[self.FRAMES], cells[self.WAITING] = 0.0, 0.0
        cells[self.LAST] = time.monotonic()
        cells[self.STAGE] = self.OPENING

    def frame(self) -> None:
        cells = self.cells
        cells[self.FRAMES] += 1
        cells[self.LAST] = time.monotonic()

    def decoding(self) -> None:
        self.cells[self.STAGE] = self.DECODING
        self.cells[self.LAST] = time.monotonic()

    def end(self) -> None:
        self.cells[self.STAGE] = self.IDLE

    @contextmanager
    def waiting(self):
        """Handing a message over, which blocks while the main process is busy: not a stall."""
        self.cells[self.WAITING] = 1.0
        try:
            yield
        finally:
            self.cells[self.WAITING] = 0.0
            self.cells[self.LAST] = time.monotonic()

    def stall(self, now: float, limit: float) -> Optional[str]:
        """What stalled, when the decoder made no progress for over `limit` seconds."""
        cells = self.cells
        if cells[self.STAGE] == self.IDLE or cells[self.WAITING] or now - cells[self.LAST] <= limit:
            return None
        frames = int(cells[self.FRAMES])
        if cells[self.STAGE] == self.OPENING:
            return f"FFmpeg did not finish opening and probing the file in {limit:g} s"
        if frames == 0:
            return f"the decoder gave no frame in the {limit:g} s after the file was opened"
        return f"the decoder stopped: no frame decoded for {limit:g} s after frame {frames}"


def _takes_on_frame(decode_fn) -> bool:
    """Whether decode_fn takes the heartbeat (tests hand in stand-ins that do not)."""
    try:
        return "on_frame" in inspect.signature(decode_fn).parameters
    except (TypeError, ValueError):
        return False


def _worker_main(jobs, conn, groups, settings, decode_fn, arena_name, credits,
                 beat_cells=None) -> None:
    # Ctrl-C, a closed terminal or a SIGTERM to the process group reach every worker; the
    # main process decides what stops and when (DecodePool.close), and a worker dying on
    # its own would be logged as a failure. Started with them blocked (signals.blocked).
    ignore_stop_signals()
    beat = Heartbeat(beat_cells)
    extra = {"on_frame": beat.frame} if _takes_on_frame(decode_fn) else {}
    parent = mp.parent_process()
    if parent is not None:
        # A main process killed with SIGKILL cannot stop us, and an idle worker would wait
        # on its job queue forever (it holds that queue's write end itself).
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    writer = SlotWriter(arena_name, credits, slot_bytes(settings.scale_on)) if arena_name \
        else None
    try:
        while True:
            item = jobs.get()
            if item is None:
                return
            video_id, path, active = item
            beat.begin()
            conn.send(Started(video_id))  # the stall clock starts now, not at spawn
            try:
                for message in decode_fn(video_id, path, groups, settings, active, **extra):
                    if isinstance(message, Info):
                        beat.decoding()
                    with beat.waiting():
                        conn.send(writer.pack(message) if writer else message)
            except (BrokenPipeError, EOFError):
                raise
            except Exception as exc:  # a bug for one video must not cost the worker
                conn.send(Failed(video_id, "decode", f"{type(exc).__name__}: {exc}"))
            beat.end()
            conn.send(Done(video_id))
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        return
    finally:
        conn.close()
        if writer is not None:
            writer.close()


def _exit_with(sentinel) -> None:
    wait([sentinel])
    os._exit(0)


def _death(process) -> str:
    """Why a worker process ended, for the failure log."""
    process.join(timeout=2)  # EOF on the pipe can come just before the exit status
    code = process.exitcode
    if code is None:
        return "the decode worker closed its pipe"
    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
    return f"the decode worker died: {exit_text(code)}{hint}"


@dataclass
class _DecodeWorker:
    """The main process's side of one decode worker process."""

    process: mp.Process
    jobs: object  # its own job queue
    conn: object  # read end of its result pipe
    credits: object  # write end of the pipe its arena's slots go back on (or None)
    beat: Heartbeat = field(default_factory=Heartbeat)
    video_id: Optional[int] = None
    last_seen: float = field(default_factory=time.monotonic)
    started: bool = False  # the worker has taken up video_id


class _Abandoned(BaseException):
    """Raised inside an inline decode thread that is no longer wanted (BaseException, so
    the decoder's per-video error handling does not turn it into a message)."""


def inline_messages(jobs: Iterator[tuple], groups: Sequence[InputGroup],
                    settings: DecodeSettings, video_timeout: Optional[float] = None,
                    decode_fn: Callable = decode_video_units) -> Iterator[tuple]:
    """Decode in this process (--num_decoding_thread 0).

    Without a time limit, in this very thread, one message at a time. With one, each video
    is decoded in a thread of its own that runs a few messages ahead, under the same
    heartbeat watch as the worker processes: a decoder that stalls gets its video logged as
    failed and is left behind (a thread stuck in native code cannot be killed; it ends when
    it wakes or with the process), and the run goes on with the next video.
    """
    if not video_timeout:
        for video_id, path, active in jobs:
            yield from decode_fn(video_id, path, groups, settings, active)
            yield Done(video_id)
        return
    takes_beat = _takes_on_frame(decode_fn)
    for video_id, path, active in jobs:
        yield from _decode_in_thread(decode_fn, (video_id, path, groups, settings, active),
                                     takes_beat, video_timeout)
        yield Done(video_id)


def _decode_in_thread(decode_fn, args: tuple, takes_beat: bool,
                      video_timeout: float) -> Iterator[tuple]:
    beat = Heartbeat()
    handed: "queue.Queue[tuple]" = queue.Queue(maxsize=INLINE_QUEUE)
    finished = object()
    abandoned = threading.Event()

    def on_frame() -> None:
        if abandoned.is_set():
            raise _Abandoned
        beat.frame()

    def hand_over(message) -> None:
        with beat.waiting():
            while True:
                if abandoned.is_set():
                    raise _Abandoned
                try:
                    handed.put(message, timeout=0.5)
                    return
                except queue.Full:
                    continue

    def run() -> None:
        try:
            extra = {"on_frame": on_frame} if takes_beat else {}
            for message in decode_fn(*args, **extra):
                if isinstance(message, Info):
                    beat.decoding()
                hand_over(message)
            beat.end()
            hand_over(finished)
        except _Abandoned:
            pass
        except Exception as exc:  # a bug for one video must not cost the run
            try:
                hand_over(Failed(args[0], "decode", f"{type(exc).__name__}: {exc}"))
                hand_over(finished)
            except _Abandoned:
                pass

    beat.begin()
    thread = threading.Thread(target=run, name=f"decode-{args[0]}", daemon=True)
    thread.start()
    try:
        while True:
            try:
                message = handed.get(timeout=min(1.0, video_timeout))
            except queue.Empty:
                stalled = beat.stall(time.monotonic(), video_timeout)
                if stalled is not None:
                    yield Failed(args[0], "decode",
                                 f"{stalled} (--video_timeout); the video was abandoned and "
                                 f"its decode thread left behind")
                    return
                continue
            if message is finished:
                return
            yield message
    finally:
        abandoned.set()  # a stall, or the consumer stopped (Ctrl-C): the thread ends soon


class DecodePool:
    """`workers` decode processes fed lazily from an iterator of (video_id, path, active
    group indices); `messages` yields what they decode (messages.py), Started excepted."""

    def __init__(self, workers: int, groups: Sequence[InputGroup], settings: DecodeSettings,
                 video_timeout: Optional[float] = None, decode_fn=decode_video_units,
                 shared_memory: bool = True):
        # decode_fn: a module-level function (it is sent to spawned processes); tests pass
        # one that hangs or crashes.
        self.ctx = mp.get_context("spawn")  # never fork a process holding torch / CUDA state
        self.groups, self.settings = groups, settings
        self.video_timeout = video_timeout
        self.decode_fn = decode_fn
        workers = max(1, workers)
        start_resource_tracker()  # before any shared memory or process: see signals.py
        # Why units go through the pipes although shared memory was asked for, or None.
        slot = slot_bytes(settings.scale_on)
        self.transport_note = shm_room(workers, slot_bytes=slot) if shared_memory else None
        # One arena per worker, kept when the worker is replaced: a killed worker writes
        # nothing more, so its successor can start with every arena slot free.
        self.arenas: list[Arena] = []
        if shared_memory and self.transport_note is None:
            try:
                for _ in range(workers):
                    self.arenas.append(Arena(slot))
            except OSError as exc:  # e.g. /dev/shm filled up since shm_room looked
                for arena in self.arenas:
                    arena.close()
                self.arenas = []
                self.transport_note = f"cannot reserve shared memory: {exc.strerror or exc}"
        self.workers = [self._start(i) for i in range(workers)]
        self.replaced = 0

    def _start(self, index: int) -> _DecodeWorker:
        jobs = self.ctx.Queue()
        reader, writer = self.ctx.Pipe(duplex=False)
        credits_reader = credits_writer = arena_name = None
        if self.arenas:
            credits_reader, credits_writer = self.ctx.Pipe(duplex=False)
            arena_name = self.arenas[index].name
        beat = self.ctx.RawArray("d", 4)  # the worker's Heartbeat, read here
        process = self.ctx.Process(target=_worker_main,
                                   args=(jobs, writer, self.groups, self.settings,
                                         self.decode_fn, arena_name, credits_reader, beat),
                                   daemon=True)
        with blocked():  # the worker ignores stop signals once it runs; none may come before
            process.start()
        writer.close()  # the child holds its own copy; EOF on ours means the child is gone
        if credits_reader is not None:
            credits_reader.close()
        return _DecodeWorker(process, jobs, reader, credits_writer, Heartbeat(beat))

    def _replace(self, index: int) -> _DecodeWorker:
        worker = self.workers[index]
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        self._close_pipes(worker)
        self.replaced += 1
        return self._start(index)

    @staticmethod
    def _close_pipes(worker: _DecodeWorker) -> None:
        worker.conn.close()
        if worker.credits is not None:
            worker.credits.close()

    def _unpack(self, index: int, message: tuple) -> tuple:
        if isinstance(message, Units) and isinstance(message.units, SlotRef):
            return message._replace(units=self.arenas[index].view(message.units))
        return message

    def _release(self, index: int, message: tuple) -> None:
        """Hand a units message's arena slot back once the consumer is done with the array."""
        worker = self.workers[index]
        if isinstance(message, Units) and isinstance(message.units, SlotRef) and worker.credits:
            try:
                worker.credits.send(message.units.slot)
            except (BrokenPipeError, OSError):  # the worker is gone; its successor starts afresh
                pass

    def messages(self, jobs: Iterator[tuple]) -> Iterator[tuple]:
        jobs = iter(jobs)
        exhausted = False
        try:
            while True:
                for index, worker in enumerate(self.workers):  # keep every idle worker busy
                    if worker.video_id is None and not exhausted:
                        job = next(jobs, None)
                        if job is None:
                            exhausted = True
                            continue
                        if not worker.process.is_alive():
                            # Died between videos (e.g. the OOM killer): the next video
                            # must not be blamed for it.
                            worker = self.workers[index] = self._replace(index)
                        worker.video_id, worker.last_seen = job[0], time.monotonic()
                        worker.started = False
                        worker.jobs.put(job)
                busy = [w for w in self.workers if w.video_id is not None]
                if not busy:
                    return
                ready = wait([w.conn for w in busy], timeout=1.0)
                now = time.monotonic()
                for index, worker in enumerate(self.workers):
                    if worker.video_id is None:
                        continue
                    if worker.conn in ready:
                        try:
                            message = worker.conn.recv()
                        except (EOFError, OSError):
                            message = None
                        if message is not None:
                            worker.last_seen = now
                            if isinstance(message, Started):
                                worker.started = True
                                continue
                            if isinstance(message, Done):
                                worker.video_id = None
                            # A units array in shared memory is only valid until the
                            # consumer asks for the next message.
                            yield self._unpack(index, message)
                            self._release(index, message)
                            continue
                        reason = f"{_death(worker.process)} while decoding this video"
                    elif not worker.started:
                        if now - worker.last_seen <= max(self.video_timeout or 0, STARTUP_LIMIT):
                            continue
                        reason = (f"the decode worker did not start within "
                                  f"{max(self.video_timeout or 0, STARTUP_LIMIT):g} s; it was "
                                  f"killed")
                    elif self.video_timeout and (stalled := worker.beat.stall(
                            now, self.video_timeout)):
                        reason = f"{stalled} (--video_timeout); the decode worker was killed"
                    else:
                        continue
                    video_id = worker.video_id
                    self.workers[index] = self._replace(index)
                    yield Failed(video_id, "decode", reason)
                    yield Done(video_id)
        finally:
            self.close()

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.jobs.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            self._close_pipes(worker)
        self.workers = []
        for arena in self.arenas:
            arena.close()
        self.arenas = []
