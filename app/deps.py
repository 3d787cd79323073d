"""Database work for endpoints: one worker thread per unit of work, behind a gate.

Every endpoint is ``async def`` and hands its database work to ``Read`` or ``Write``:
``await read(users.get, user_id)`` runs ``users.get(session, user_id)`` in one worker thread
on a sync ``Session`` of its own, and closes the session in that thread before it returns.
A write commits when the work returns and rolls back if it raises, so no request
half-commits, and the commit happens before the response is sent.
"""

import functools
from collections.abc import Callable
from typing import Annotated, Concatenate, ParamSpec, TypeVar

import anyio
from dependency_injector.wiring import Provide
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.sqlite import BEGIN_MODE
from containers import container

__all__ = ["AsyncProvide", "DatabaseBusyError", "Gate", "Read", "Reader", "Write", "Writer"]

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


def _transaction(
    writes: bool, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    with container.session() as session:
        if not writes:
            # A deferred BEGIN: reads never wait for SQLite's write lock.
            session.connection(execution_options={BEGIN_MODE: "DEFERRED"})
            return fn(session, *args, **kwargs)  # closing the session rolls the read back
        # BEGIN IMMEDIATE on SQLite: the write lock is taken up front, never upgraded later.
        with session.begin():
            return fn(session, *args, **kwargs)


class _InThread:
    """Runs database work in one worker thread, in a transaction of its own, behind a gate.

    One thread hop per request, where a sync endpoint on a ``get_db`` dependency takes four
    (dependency setup, endpoint, response validation, dependency teardown). FastAPI then
    validates the returned objects on the event loop; they are detached by then, so load
    what the response needs inside the work (``selectinload``).
    """

    writes: bool

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        await self.gate.acquire()
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(_transaction, self.writes, fn, *args, **kwargs)
            )
        finally:
            self.gate.release()


class Reader(_InThread):
    """``await read(fn, *args)``: ``fn(session, *args)`` in a read transaction, rolled back."""

    writes = False


class Writer(_InThread):
    """``await write(fn, *args)``: ``fn(session, *args)`` in a transaction, committed when
    ``fn`` returns and rolled back if it raises."""

    writes = True


async def _reader(request: Request) -> Reader:
    reader: Reader = request.app.state.reader
    return reader


async def _writer(request: Request) -> Writer:
    writer: Writer = request.app.state.writer
    return writer


Read = Annotated[Reader, Depends(_reader)]
Write = Annotated[Writer, Depends(_writer)]
