"""Sessions for endpoints, and the bounded admission gate in front of the database.

Every endpoint is ``async def``. Reads go through ``Read``: a sync ``Session`` in one worker
thread, opened and closed around the work. Writes take a ``WriteSession``: an
``AsyncSession`` on the event loop, committed when the handler succeeds, rolled back on any
error. Either way the session is closed before the response is sent.
"""

import functools
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Concatenate, ParamSpec, TypeVar

import anyio
from dependency_injector.wiring import Provide
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.sqlite import BEGIN_MODE
from containers import container

__all__ = ["AsyncProvide", "DatabaseBusyError", "Gate", "Read", "Reader", "WriteSession"]

P = ParamSpec("P")
T = TypeVar("T")


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


def _in_read_transaction(
    fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    with container.session() as session:
        # A deferred BEGIN: reads never wait for SQLite's write lock.
        session.connection(execution_options={BEGIN_MODE: "DEFERRED"})
        return fn(session, *args, **kwargs)


class Reader:
    """Runs read-only database work in one worker thread, on a session of its own.

    ``await read(users.get, user_id)`` passes the read gate on the event loop, then calls
    ``users.get(session, user_id)`` in a worker thread inside a read transaction and closes
    the session (rolling the transaction back) in that same thread before it returns.

    One thread hop per read, where a sync endpoint on a ``get_db`` dependency takes four
    (dependency setup, endpoint, response validation, dependency teardown). The endpoint is
    ``async def``, so FastAPI validates the returned objects on the event loop; they are
    detached by then, so load what the response needs in ``fn`` (``selectinload``).
    """

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        await self.gate.acquire()
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(_in_read_transaction, fn, *args, **kwargs)
            )
        finally:
            self.gate.release()


async def _reader(request: Request) -> Reader:
    reader: Reader = request.app.state.reader
    return reader


async def _write_session() -> AsyncIterator[AsyncSession]:
    async with container.async_session() as session, session.begin():
        yield session


Read = Annotated[Reader, Depends(_reader)]
WriteSession = Annotated[AsyncSession, Depends(_write_session, scope="function")]
