"""Deadlines that interrupt whatever a step is waiting for, and clean-up that signals
cannot cut short.

:func:`deadline` arms a real-time timer for the block (the main thread only; elsewhere
it does nothing and the per-call timeouts stand): when it fires, the block raises the
given :class:`~harness.errors.HarnessTimeout`, whatever it was blocked in.

:func:`signals_deferred` holds SIGINT and SIGTERM for the block and then consumes them,
reporting which came: a second Ctrl-C during clean-up neither cuts the clean-up short nor
changes the run's verdict; the caller stops what comes after.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from harness.errors import HarnessTimeout

__all__ = ["deadline", "signals_deferred", "DEFERRED", "Held"]


class Held:
    """A signal handler that only notes the signals that came (``harness.launch`` holds
    SIGINT and SIGTERM with it while the harness is imported)."""

    def __init__(self) -> None:
        self.came: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.came.append(signum)

DEFERRED = {signal.SIGINT, signal.SIGTERM}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deadline(seconds: float, error: Callable[[], HarnessTimeout]) -> Iterator[None]:
    """Raise ``error()`` in the block once *seconds* have passed (main thread only)."""
    if not _main_thread() or seconds <= 0:
        yield
        return

    def fire(signum: int, frame: FrameType | None) -> None:
        raise error()
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """SIGINT and SIGTERM are held for the block and then consumed, not delivered: the
    yielded list receives the signals that came (main thread only)."""
    came: list[int] = []
    if not _main_thread():
        yield came
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield came
    finally:
        while pending := signal.sigpending() & DEFERRED:
            for signum in pending:
                signal.sigtimedwait([signum], 0)
                came.append(int(signum))
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
