"""Ctrl-C and SIGTERM during training: interrupt the work, but never a file being finished.

A run is stopped by SIGINT (Ctrl-C) or SIGTERM (a scheduler, `kill`). While epochs run, both
should interrupt at once: the last complete epoch is in the backup. While the finished run is
being written (model, metrics, final status), an interrupt would leave a run that is neither
finished nor resumable, so the signals are deferred until the files are in place.
"""

import contextlib
import signal
import threading
from typing import Iterator, List

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    # Python installs signal handlers only from the main thread (not e.g. in a server thread).
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Makes SIGTERM raise KeyboardInterrupt, as Ctrl-C does, inside the block."""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[List[str]]:
    """Holds SIGINT and SIGTERM back inside the block.

    Yields:
        A list that receives the name of each signal that arrived during the block; the caller
        acts on it afterwards (the signal is not re-delivered).
    """
    received: List[str] = []
    if not _in_main_thread():
        yield received
        return

    def remember(signum, frame):
        received.append(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, remember) for signum in _SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
