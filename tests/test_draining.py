"""app.lifespan.on_signals: the first SIGTERM (or SIGINT) marks the app as draining, and
the server's own handler still runs."""

import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from app import lifespan
from app.runtime import Runtime


@pytest.fixture
def received() -> Iterator[list[int]]:
    """A recording handler for SIGTERM and SIGINT in place of whatever was there: the server's."""
    signals: list[int] = []

    def record(sig: int, frame: FrameType | None) -> None:
        signals.append(sig)

    originals = {sig: signal.signal(sig, record) for sig in lifespan.SIGNALS}
    try:
        yield signals
    finally:
        for sig, handler in originals.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig", lifespan.SIGNALS)
def test_a_signal_drains_and_reaches_the_servers_handler(received: list[int], sig: int) -> None:
    runtime = Runtime()
    with lifespan.on_signals(runtime):
        assert runtime.draining is False
        signal.raise_signal(sig)
        assert runtime.draining is True
        assert received == [sig]
    before = signal.getsignal(sig)
    assert callable(before)
    assert before.__name__ == "record"  # the server's handler is back


def test_the_handler_is_left_alone_if_someone_replaced_it(received: list[int]) -> None:
    def other(sig: int, frame: FrameType | None) -> None:
        """Installed by someone else while the app served."""

    with lifespan.on_signals(Runtime()):
        signal.signal(signal.SIGTERM, other)
    assert signal.getsignal(signal.SIGTERM) is other


def test_an_ignored_signal_stays_ignored(received: list[int]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    runtime = Runtime()
    with lifespan.on_signals(runtime):
        signal.raise_signal(signal.SIGTERM)
    assert runtime.draining is True
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_outside_the_main_thread_nothing_is_installed(received: list[int]) -> None:
    runtime = Runtime()
    handlers: list[object] = []

    def run() -> None:
        with lifespan.on_signals(runtime):
            handlers.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert runtime.draining is False
    assert [getattr(h, "__name__", h) for h in handlers] == ["record"]
