"""Units of database work: a read or write transaction in one worker thread, behind a gate.

Every endpoint is ``async def`` and hands its database work to a ``Reader`` or ``Writer``
(built by the container): ``await read(users.get, user_id)`` runs ``users.get(session,
user_id)`` in one worker thread on a sync ``Session`` of its own, and closes the session in
that thread before it returns. A write commits when the work returns and rolls back if it
raises, so no request half-commits, and the commit happens before the response is sent. A
read runs in a read-only transaction: work that tries to write fails with
``WriteInReadError`` instead of being rolled back in silence.
"""

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, UOWTransaction

from app import context
from app.exceptions import DatabaseBusyError, WriteInReadError
from app.sqlite import BEGIN_MODE, QUERY_ONLY

__all__ = ["Gate", "Reader", "Writer"]

P = ParamSpec("P")
T = TypeVar("T")
SessionFactory = Callable[[], Session]

_READ_ONLY = "app.read_only"
"""``Session.info`` key of sessions that a ``Reader`` runs."""
_READ_OPTIONS = {
    # A deferred BEGIN: reads never wait for SQLite's write lock.
    BEGIN_MODE: "DEFERRED",
    QUERY_ONLY: True,
    # psycopg sends BEGIN READ ONLY: no extra round trip.
    "postgresql_readonly": True,
}
_SQLITE_READONLY = 8
_PG_READ_ONLY_SQL_TRANSACTION = "25006"


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


class _Unit(ABC):
    """Runs database work in one worker thread, in a transaction of its own, behind a gate.

    One thread hop per request, where a sync endpoint on a ``get_db`` dependency takes four
    (dependency setup, endpoint, response validation, dependency teardown). FastAPI then
    validates the returned objects on the event loop; they are detached by then, so load
    what the response needs inside the work (``selectinload``).
    """

    kind: ClassVar[context.GateKind]

    def __init__(self, gate: Gate, sessions: SessionFactory) -> None:
        self.gate = gate
        self.sessions = sessions

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        arrived = time.perf_counter()
        try:
            await self.gate.acquire()
        finally:
            # Also when it gave up: the access log shows what a gate-timeout 503 waited.
            context.add_gate_wait(self.kind, time.perf_counter() - arrived)
        try:
            return await anyio.to_thread.run_sync(functools.partial(self._run, fn, *args, **kwargs))
        finally:
            self.gate.release()

    @abstractmethod
    def _run(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...


class Reader(_Unit):
    """``await read(fn, *args)``: ``fn(session, *args)`` in a read-only transaction.

    Work that adds, changes or deletes rows raises ``WriteInReadError``: before the flush
    for ORM changes, and from the database itself (``PRAGMA query_only`` on SQLite,
    ``BEGIN READ ONLY`` on PostgreSQL) for statements such as ``session.execute(insert(...))``.
    """

    kind = "read"

    def _run(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with self.sessions() as session:
            session.info[_READ_ONLY] = True
            if not isinstance(session.bind, Connection):
                # A session bound to a Connection joins the caller's transaction (tests'
                # SAVEPOINT recipe), whose mode it cannot change: the flush guard remains.
                session.connection(execution_options=_READ_OPTIONS)
            try:
                result = fn(session, *args, **kwargs)
                session.flush()  # no-op unless the work left changes behind
            except WriteInReadError as error:
                raise WriteInReadError(f"{_name(fn)}: {error}") from None
            except DBAPIError as error:
                if not _is_read_only_violation(error):
                    raise
                reason = str(error.orig).splitlines()[0]
                raise WriteInReadError(
                    f"{_name(fn)} wrote in a read-only transaction ({reason}); use Write"
                ) from error
            return result  # closing the session rolls the read back


class Writer(_Unit):
    """``await write(fn, *args)``: ``fn(session, *args)`` in a transaction, committed when
    ``fn`` returns and rolled back if it raises."""

    kind = "write"

    def _run(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        # BEGIN IMMEDIATE on SQLite: the write lock is taken up front, never upgraded later.
        with self.sessions() as session, session.begin():
            return fn(session, *args, **kwargs)


@event.listens_for(Session, "before_flush")
def _refuse_flush_in_reads(session: Session, context: UOWTransaction, instances: Any) -> None:
    if session.info.get(_READ_ONLY):
        raise WriteInReadError(
            f"tried to flush {len(session.new)} new, {len(session.dirty)} changed and "
            f"{len(session.deleted)} deleted objects in a read-only transaction; use Write"
        )


def _is_read_only_violation(error: DBAPIError) -> bool:
    orig = error.orig
    return (
        # Extended codes (SQLITE_READONLY_*) keep the primary code in the low byte.
        (getattr(orig, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_READONLY
        or getattr(orig, "sqlstate", None) == _PG_READ_ONLY_SQL_TRANSACTION
    )


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
