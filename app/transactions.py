"""Units of database work: a read or write transaction in one worker thread, behind a gate.

Every endpoint is ``async def`` and hands its database work to a ``Reader`` or ``Writer``
(built by the container): ``await read(users.get, user_id)`` runs ``users.get(session,
user_id)`` in one worker thread on a sync ``Session`` of its own, and closes the session in
that thread before it returns. A write commits when the work returns and rolls back if it
raises, so no request half-commits, and the commit happens before the response is sent. A
read runs in a read-only transaction: work that tries to write fails with
``WriteInReadError`` instead of being rolled back in silence.

With replicas (``app.replicas``), a read runs on one of them unless the request must see a
WAL position that none is known, or found, to have replayed; a write then leaves the
primary's position after its commit in the request's context (``app.consistency`` hands it
to the client).
"""

import logging
import math
import sqlite3
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar, cast

import anyio
import anyio.to_thread
from sqlalchemy import Connection, event, exc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, UOWTransaction

from app import context
from app.exceptions import DatabaseBusyError, WriteInReadError
from app.replicas import PRIMARY, Replica, ReplicaSet, insert_position, replayed_position
from app.sqlite import BEGIN_MODE, QUERY_ONLY

__all__ = ["DATABASE_FAILURES", "Gate", "Reader", "Writer"]

log = logging.getLogger("app")

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
_SQLITE_INTERRUPT = 9
_SLOW_INLINE_SECONDS = 0.1
_PROGRESS_STEPS = 1000
"""SQLite virtual-machine steps between two looks at an inline read's clock (~10-50 µs)."""
_PG_READ_ONLY = "25006"
"""SQLSTATE read_only_sql_transaction."""
_PG_UNDEFINED = "42"
"""SQLSTATE class of undefined tables, columns and functions (and of syntax errors)."""
_COMMITTING = "app.committing"
_COMMITTED_AT = "app.committed_at"
"""``Session.info`` keys: the connection a tracked write commits on, then the primary's WAL
position after that commit."""

DATABASE_FAILURES: tuple[type[Exception], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    # What psycopg raises when PgBouncer loses its server during a COMMIT ("received 2
    # results from command 'COMMIT'"), and PostgreSQL's own XX000: the database, not the
    # request, is at fault.
    exc.InternalError,
    exc.TimeoutError,
    exc.DisconnectionError,
)
"""Errors that say a database is down or unreachable, not that the work is wrong: a read
that meets one on a replica runs again elsewhere."""


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
    (dependency setup, endpoint, response validation, dependency teardown). The work returns
    what the response needs (schemas, not ORM objects, which stay in the transaction).
    """

    kind: ClassVar[context.GateKind]

    def __init__(self, gate: Gate, sessions: SessionFactory) -> None:
        self.gate = gate
        self.sessions = sessions

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        await self._acquire()
        try:
            return await anyio.to_thread.run_sync(self._run, fn, args, kwargs)
        finally:
            self.gate.release()

    async def _acquire(self) -> None:
        arrived = time.perf_counter()
        try:
            await self.gate.acquire()
        finally:
            # Also when it gave up: the access log shows what a gate-timeout 503 waited.
            context.add_gate_wait(self.kind, time.perf_counter() - arrived)

    @abstractmethod
    def _run(self, fn: Callable[..., T], args: Any, kwargs: Any, budget: float = 0) -> T: ...


class _OverBudgetError(Exception):
    """An inline read took too long for the event loop: it was interrupted, nothing lost."""


class _NotReplayedError(Exception):
    """The replica has not replayed the position the read must see (yet)."""


class Reader(_Unit):
    """``await read(fn, *args)``: ``fn(session, *args)`` in a read-only transaction.

    Work that adds, changes or deletes rows raises ``WriteInReadError``: before the flush
    for ORM changes, and from the database itself (``PRAGMA query_only`` on SQLite,
    ``BEGIN READ ONLY`` on PostgreSQL) for statements such as ``session.execute(insert(...))``.

    With ``inline_budget`` (SQLite: its reads are CPU work in this process and never wait
    for a lock), the work runs on the event loop, saving the thread hop, which costs more
    than a short query; a read that keeps SQLite busy longer than the budget is interrupted
    and run again in a worker thread, so the event loop is never held long.

    With ``replicas``, the work runs on a replica that serves reads, taking turns, and on
    the primary (``sessions``) when none does. A request that must see a WAL position
    (``app.context.wal_position()``) runs on a replica only if it is known to have replayed
    it, or says so inside the read's transaction; else on the primary. A replica that fails
    with a database error (``DATABASE_FAILURES``) is skipped from then on until its next good
    check, and the work runs again on the next one, or on the primary: reads are idempotent.
    A read that names a table or column the replica does not have (a migration it has not
    replayed yet) runs again on the primary, which answers for good.
    """

    kind = "read"

    def __init__(
        self,
        gate: Gate,
        sessions: SessionFactory,
        *,
        inline_budget: float | None = None,
        replicas: ReplicaSet | None = None,
    ) -> None:
        super().__init__(gate, sessions)
        self.inline_budget = inline_budget
        self.replicas = replicas
        self._slow_warned_at = -math.inf

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self.replicas is not None:
            position = context.wal_position()
            await self._acquire()
            try:
                return await anyio.to_thread.run_sync(
                    self._run_routed, self.replicas, fn, args, kwargs, position
                )
            finally:
                self.gate.release()
        if self.inline_budget is None:
            return await super().__call__(fn, *args, **kwargs)
        await self._acquire()
        started = time.perf_counter()
        try:
            try:
                return self._run(fn, args, kwargs, self.inline_budget)
            except _OverBudgetError:
                return await anyio.to_thread.run_sync(self._run, fn, args, kwargs)
        finally:
            self.gate.release()
            self._warn_if_slow(fn, time.perf_counter() - started)

    def _warn_if_slow(self, fn: Callable[..., object], seconds: float) -> None:
        """A read's own Python code cannot be interrupted: say so when one held the loop
        (at most every 10 s)."""
        now = time.monotonic()
        if seconds >= _SLOW_INLINE_SECONDS and now - self._slow_warned_at >= 10:
            self._slow_warned_at = now
            log.warning(
                "%s held the event loop for %.0f ms: reads on SQLite run on the event loop, "
                "so keep their Python work short (or set SQLITE_READ_ON_LOOP_MS=0)",
                _name(fn),
                seconds * 1000,
            )

    async def on_primary(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(session, *args)`` in a read-only transaction on the primary, replicas or not."""
        return await super().__call__(fn, *args, **kwargs)

    def _run_routed(
        self,
        replicas: ReplicaSet,
        fn: Callable[..., T],
        args: Any,
        kwargs: Any,
        position: int | None,
    ) -> T:
        for replica in replicas.candidates(position):
            wait_for = None if position is None or replica.reached(position) else position
            try:
                result = self._run_on(replica, wait_for, fn, args, kwargs)
            except _NotReplayedError:
                break  # the primary has it
            except DATABASE_FAILURES as error:
                replicas.failed(replica, error)
                continue
            except exc.ProgrammingError as error:
                if (_sqlstate(error) or "")[:2] != _PG_UNDEFINED:
                    raise
                break  # a migration it has not replayed yet, perhaps: the primary knows
            replicas.served(replica.name)
            return result
        result = self._run(fn, args, kwargs)
        replicas.served(PRIMARY)
        return result

    def _run_on(
        self,
        replica: Replica,
        position: int | None,
        fn: Callable[..., T],
        args: Any,
        kwargs: Any,
    ) -> T:
        """The read on ``replica``; with ``position``, only if it has replayed that far."""

        def caught_up(connection: Connection) -> None:
            assert position is not None
            replica.saw_replayed(replayed_position(connection))
            if not replica.reached(position):
                raise _NotReplayedError

        return self._read(replica.sessions, fn, args, kwargs, check=caught_up if position else None)

    def _run(self, fn: Callable[..., T], args: Any, kwargs: Any, budget: float = 0) -> T:
        return self._read(self.sessions, fn, args, kwargs, budget)

    def _read(
        self,
        sessions: SessionFactory,
        fn: Callable[..., T],
        args: Any,
        kwargs: Any,
        budget: float = 0,
        check: Callable[[Connection], None] | None = None,
    ) -> T:
        with sessions() as session:
            session.info[_READ_ONLY] = True
            driver: sqlite3.Connection | None = None
            if not isinstance(session.bind, Connection):
                # A session bound to a Connection joins the caller's transaction (tests'
                # SAVEPOINT recipe), whose mode it cannot change: the flush guard remains.
                connection = session.connection(execution_options=_READ_OPTIONS)
                if check is not None:
                    check(connection)
                if budget:
                    driver = cast(sqlite3.Connection, connection.connection.driver_connection)
                    deadline = time.thread_time() + budget
                    driver.set_progress_handler(
                        lambda: time.thread_time() > deadline, _PROGRESS_STEPS
                    )
            try:
                result = fn(session, *args, **kwargs)
                session.flush()  # no-op unless the work left changes behind
            except WriteInReadError as error:
                raise WriteInReadError(f"{_name(fn)}: {error}") from None
            except DBAPIError as error:
                if driver is not None and _code(error) == _SQLITE_INTERRUPT:
                    raise _OverBudgetError from error
                if _code(error) != _SQLITE_READONLY and _sqlstate(error) != _PG_READ_ONLY:
                    raise
                reason = str(error.orig).splitlines()[0]
                raise WriteInReadError(
                    f"{_name(fn)} wrote in a read-only transaction ({reason}); use Write"
                ) from error
            finally:
                if driver is not None:
                    driver.set_progress_handler(None, 0)
            return result  # closing the session rolls the read back


@dataclass(eq=False)
class _Job:
    """One ``write(fn, ...)`` waiting for, or done in, a batch."""

    fn: Callable[..., Any]
    args: Any
    kwargs: Any
    queued_at: float
    started_at: float | None = None
    outcome: tuple[bool, Any] | None = None  # (succeeded, value or exception)


class Writer(_Unit):
    """``await write(fn, *args)``: ``fn(session, *args)`` in a transaction, committed when
    ``fn`` returns and rolled back if it raises.

    With ``batch_size`` > 1 (SQLite: one writer at a time anyway), writes that queue while a
    transaction runs go together into the next one, in order: one thread hop, one BEGIN
    IMMEDIATE and one COMMIT for them all (group commit). Each still answers only once its
    changes are committed. If any of them raises, the batch is rolled back and each runs
    again in a transaction of its own, so a failing write takes nobody else down and no
    write half-commits; so a unit of work may run twice, and must keep its side effects in
    the database.

    With ``wal_positions`` (PostgreSQL with replicas), each write then reads the primary's
    WAL position on the connection it committed on (one more round trip) and advances the
    request's (``app.context.advance_wal_position``): the request's later reads, and the
    client's, must see it.
    """

    kind = "write"

    def __init__(
        self,
        gate: Gate,
        sessions: SessionFactory,
        *,
        batch_size: int = 1,
        wal_positions: bool = False,
    ) -> None:
        super().__init__(gate, sessions)
        if wal_positions and batch_size > 1:
            raise ValueError("WAL positions are for PostgreSQL: its writes come one at a time")
        self.batch_size = batch_size
        self.wal_positions = wal_positions
        self._queue: deque[_Job] = deque()
        self._leading = False
        self._batch_done: anyio.Event | None = None

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self.wal_positions:
            await self._acquire()
            try:
                written, position = await anyio.to_thread.run_sync(
                    self._run_tracked, fn, args, kwargs
                )
            finally:
                self.gate.release()
            context.advance_wal_position(position)
            return written
        if self.batch_size == 1:
            return await super().__call__(fn, *args, **kwargs)
        job = _Job(fn, args, kwargs, queued_at=time.perf_counter())
        self._queue.append(job)
        deadline = time.monotonic() + self.gate.timeout
        try:
            while job.outcome is None:
                if not self._leading:
                    await self._lead()  # this request runs the next batch, for everyone
                    continue
                left = deadline - time.monotonic()
                if left <= 0 and job.started_at is None:
                    raise DatabaseBusyError(
                        f"no database connection free within {self.gate.timeout:g}s"
                    )
                assert self._batch_done is not None  # made by the leader
                with anyio.move_on_after(left if job.started_at is None else math.inf):
                    await self._batch_done.wait()
        finally:
            if job.started_at is None:
                self._queue.remove(job)
            waited = (job.started_at or time.perf_counter()) - job.queued_at
            context.add_gate_wait(self.kind, waited)  # in this request's own context
        succeeded, value = job.outcome
        if not succeeded:
            raise value
        result: T = value
        return result

    async def _lead(self) -> None:
        self._leading = True
        done = self._batch_done = anyio.Event()  # what the others wait for
        try:
            await self.gate.acquire()
            try:
                size = min(self.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(size)]
                started = time.perf_counter()
                for job in batch:
                    job.started_at = started
                outcomes = await anyio.to_thread.run_sync(self._run_batch, batch)
                for job, outcome in zip(batch, outcomes, strict=True):
                    job.outcome = outcome
            finally:
                self.gate.release()
        finally:
            self._leading = False
            done.set()

    def _run_batch(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        if len(batch) > 1:
            try:
                with self.sessions() as session, session.begin():
                    return [(True, job.fn(session, *job.args, **job.kwargs)) for job in batch]
            except Exception:
                pass
        return [self._attempt(job) for job in batch]

    def _attempt(self, job: _Job) -> tuple[bool, Any]:
        try:
            return True, self._run(job.fn, job.args, job.kwargs)
        except Exception as error:
            return False, error

    def _run(self, fn: Callable[..., T], args: Any, kwargs: Any, budget: float = 0) -> T:
        # BEGIN IMMEDIATE on SQLite: the write lock is taken up front, never upgraded later.
        with self.sessions() as session, session.begin():
            return fn(session, *args, **kwargs)

    def _run_tracked(self, fn: Callable[..., T], args: Any, kwargs: Any) -> tuple[T, int]:
        with self.sessions() as session:
            with session.begin():
                result = fn(session, *args, **kwargs)
                if not isinstance(session.bind, Connection):  # else it commits nothing
                    # _note_commit_position reads it after COMMIT, before it goes back to the pool.
                    session.info[_COMMITTING] = session.connection()
            return result, session.info.pop(_COMMITTED_AT, 0)


@event.listens_for(Session, "before_flush")
def _refuse_flush_in_reads(session: Session, context: UOWTransaction, instances: Any) -> None:
    if session.info.get(_READ_ONLY):
        raise WriteInReadError(
            f"tried to flush {len(session.new)} new, {len(session.dirty)} changed and "
            f"{len(session.deleted)} deleted objects in a read-only transaction; use Write"
        )


@event.listens_for(Session, "after_commit")
def _note_commit_position(session: Session) -> None:
    # A position read inside the transaction would be before its commit record.
    connection: Connection | None = session.info.pop(_COMMITTING, None)
    if connection is not None:
        session.info[_COMMITTED_AT] = insert_position(connection.connection.driver_connection)


def _code(error: DBAPIError) -> int:
    """SQLite's primary result code (extended codes keep it in the low byte), else 0."""
    return getattr(error.orig, "sqlite_errorcode", 0) & 0xFF


def _sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
