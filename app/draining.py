"""Readiness drains from the first SIGTERM on: ``/health`` answers 503 while the server
finishes the requests in flight.

uvicorn already stops accepting connections on SIGTERM (or SIGINT), closes the idle
keep-alive ones, waits up to ``--timeout-graceful-shutdown`` for the requests in flight and
only then runs the lifespan shutdown. What it does not do is tell the app; so, while the app
serves, its handler for those signals is wrapped: the wrapper sets ``state.draining`` and
calls it. This works in every worker of ``--workers N`` (uvicorn's supervisor sends each one
SIGTERM) and with any server that handles the signals in Python.
"""

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from starlette.datastructures import State

__all__ = ["SIGNALS", "on_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def on_signals(state: State) -> Iterator[None]:
    """``state.draining`` is False until SIGTERM or SIGINT reaches the process, then True;
    the handler that was there before (the server's) runs as well."""
    state.draining = False
    if threading.current_thread() is not threading.main_thread():
        # Signals are handled in the main thread only: an app started by a TestClient.
        yield
        return
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def drain(sig: int, frame: FrameType | None) -> None:
        state.draining = True
        handler: Callable[[int, FrameType | None], Any] | int | None = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in SIGNALS:
        signal.signal(sig, drain)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if signal.getsignal(number) is drain:
                signal.signal(number, handler)
