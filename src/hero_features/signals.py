"""Stopping on a signal: SIGTERM (docker stop, Kubernetes, SLURM) and SIGHUP (a closed
terminal) stop a run the way Ctrl-C does.

The main process turns the first stop signal into `Interrupted`, a KeyboardInterrupt, so
every clean-up path written for Ctrl-C runs for the others too: finished outputs are
written, decode workers are stopped, shared memory is unlinked, the summary is printed, and
the exit status is 128 + the signal number (130, 143, 129). Signals that arrive while it
cleans up are ignored, so a second SIGTERM cannot cut the clean-up short (SIGKILL still can).

Helper processes (decode workers) ignore stop signals: a signal sent to the whole process
group (Ctrl-C, a closed terminal, `kill -TERM -PGID`) must not kill them before the main
process has stopped using them, which would log their videos as failed. They start with the
signals blocked (`blocked()` around the start), so no signal reaches them in the moment
before they ignore it, and they exit when the main process stops them or dies.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run was told to stop by `signum`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process that a signal ended."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def exit_text(code: Optional[int]) -> str:
    """How a child process ended, from its exit code: "exit code 3", "killed by SIGKILL"."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stop(signum: int, _frame) -> None:
    for other in STOP_SIGNALS:  # once: the clean-up this starts must not be interrupted
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """In the main process, while the command runs: the first of SIGINT, SIGTERM and SIGHUP
    raises Interrupted. The previous handlers are put back afterwards (main() may be called
    from a program with handlers of its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (it unlinks the shared memory of processes
    that die without doing so) with the stop signals blocked. It ignores SIGINT and SIGTERM
    by itself but not SIGHUP; started this way it never sees a SIGHUP sent to the process
    group either, and is still there to take the unlinks when the main process cleans up."""
    try:
        from multiprocessing import resource_tracker
    except ImportError:  # not POSIX
        return
    with blocked():
        resource_tracker.ensure_running()


@contextmanager
def blocked() -> Iterator[None]:
    """Hold the stop signals back (they are delivered on leaving); a process started
    inside inherits them blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals() -> None:
    """In a helper process: ignore the stop signals (its parent decides when it stops)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
