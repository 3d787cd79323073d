"""Request-scoped sessions and the bounded admission gate in front of the database.

Reads run in sync endpoints (thread pool) on a sync ``Session``; writes run in async
endpoints on an ``AsyncSession``. Each request gets one session, committed when the handler
succeeds, rolled back on any error, and always closed before the response is sent.
"""

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import anyio
from dependency_injector.wiring import Provide
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.sqlite import BEGIN_MODE
from containers import container

__all__ = ["AsyncProvide", "DatabaseBusyError", "Gate", "ReadSession", "WriteSession"]


class AsyncProvide(Provide):  # type: ignore[misc,valid-type]
    """``Provide`` for ``Depends``: FastAPI awaits it on the event loop.

    FastAPI runs a sync dependency, such as the plain marker's ``__call__``, in the thread
    pool: one thread hop per injected service per request, for nothing. ``@inject`` replaces
    the marker with the provided object either way.
    """

    async def __call__(self) -> "AsyncProvide":
        return self


class DatabaseBusyError(Exception):
    """No database connection became free within the configured wait."""


class Gate:
    """At most ``capacity`` requests hold a sync connection; the rest wait ``timeout`` seconds.

    Admission happens on the event loop before a request takes a worker thread, so a thread
    never blocks on the connection pool while a connection holder waits for a thread: the
    thread-pool/connection-pool deadlock of the classic pattern cannot happen.
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


async def _admitted(request: Request) -> AsyncIterator[None]:
    gate: Gate = request.app.state.db_gate
    await gate.acquire()
    try:
        yield
    finally:
        gate.release()


def _read_session(_: Annotated[None, Depends(_admitted, scope="function")]) -> Iterator[Session]:
    with container.session() as session:
        # A deferred BEGIN: reads never wait for SQLite's write lock.
        session.connection(execution_options={BEGIN_MODE: "DEFERRED"})
        yield session


async def _write_session() -> AsyncIterator[AsyncSession]:
    async with container.async_session() as session, session.begin():
        yield session


ReadSession = Annotated[Session, Depends(_read_session, scope="function")]
WriteSession = Annotated[AsyncSession, Depends(_write_session, scope="function")]
