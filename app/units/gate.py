"""A gate: at most N units of database work at once; the rest wait on the event loop, FIFO."""

import anyio

from app.exceptions import DatabaseBusyError

__all__ = ["Gate"]


class Gate:
    """At most ``capacity`` units of work at once; the rest wait ``timeout`` seconds, FIFO.

    Admission happens on the event loop before the work takes a worker thread, and the work
    gets and returns its connection inside that one thread, so a connection holder never
    waits for a thread: the thread-pool/connection-pool deadlock of the classic pattern
    (FastAPI issue 3205) cannot happen.
    """

    def __init__(self, capacity: int, timeout: float) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self._slots = anyio.Semaphore(capacity)

    async def acquire(self) -> None:
        try:
            self._slots.acquire_nowait()  # the common case: no cancel scope, no wait
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise DatabaseBusyError(
                    f"no database connection free within {self.timeout:g}s"
                ) from None

    def release(self) -> None:
        self._slots.release()
