"""``Reader``: a unit of work in a read-only transaction, on the event loop (SQLite, within a
budget), in a worker thread, or on a replica (``app.replicas.routing``)."""

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Concatenate, cast

import anyio.to_thread
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import request_context
from app.db.session import READ_ONLY
from app.db.sqlite import BEGIN_MODE, QUERY_ONLY
from app.exceptions import WriteInReadError
from app.observability import tracing
from app.replicas.replica_set import ReplicaSet
from app.replicas.routing import run_routed
from app.units.base import P, SessionFactory, T, Unit, qualified_name, sqlite_code, sqlstate
from app.units.gate import Gate

__all__ = ["Reader"]

log = logging.getLogger("app")

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


class _OverBudgetError(Exception):
    """An inline read took too long for the event loop: it was interrupted, nothing lost."""


class Reader(Unit):
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
    (``app.request_context.wal_position()``) runs on a replica only if it is known to have replayed
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

    async def _serve(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if self.replicas is not None:
            position = request_context.wal_position()
            await self._acquire()
            try:
                return await anyio.to_thread.run_sync(
                    run_routed,
                    self.replicas,
                    position,
                    lambda sessions, check: self._read(sessions, fn, args, kwargs, check=check),
                    self._run,
                    fn,
                    args,
                    kwargs,
                )
            finally:
                self.gate.release()
        if self.inline_budget is None:
            return await super()._serve(fn, args, kwargs)
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
                qualified_name(fn),
                seconds * 1000,
            )

    async def on_primary(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(session, *args)`` in a read-only transaction on the primary, replicas or not."""
        hooks = tracing.hooks
        if hooks is None:
            return await Unit._serve(self, fn, args, kwargs)
        with hooks.unit(self.kind):
            return await Unit._serve(self, fn, args, kwargs)

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
            session.info[READ_ONLY] = True
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
                raise WriteInReadError(f"{qualified_name(fn)}: {error}") from None
            except DBAPIError as error:
                if driver is not None and sqlite_code(error) == _SQLITE_INTERRUPT:
                    raise _OverBudgetError from error
                if sqlite_code(error) != _SQLITE_READONLY and sqlstate(error) != _PG_READ_ONLY:
                    raise
                reason = str(error.orig).splitlines()[0]
                raise WriteInReadError(
                    f"{qualified_name(fn)} wrote in a read-only transaction ({reason}); use Write"
                ) from error
            finally:
                if driver is not None:
                    driver.set_progress_handler(None, 0)
            return result  # closing the session rolls the read back
