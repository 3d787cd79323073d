"""SQLite connection setup: connect-time pragmas and explicit transaction control."""

import os
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry

from app.db.urls import is_memory

__all__ = [
    "BEGIN_MODE",
    "QUERY_ONLY",
    "check_database_folder",
    "install_hooks",
    "shared_memory_url",
]

BEGIN_MODE = "sqlite_begin"
"""Execution option naming the BEGIN flavour: "IMMEDIATE" (the default) or "DEFERRED"."""
_BEGIN_MODES = ("IMMEDIATE", "DEFERRED", "EXCLUSIVE")
QUERY_ONLY = "sqlite_query_only"
"""Execution option: when true, the transaction runs with ``PRAGMA query_only``, so any
statement that would change the database fails with SQLITE_READONLY."""


def check_database_folder(url: str | URL) -> None:
    """Raise a clear error now instead of "unable to open database file" at first query.

    An ``ArgumentError`` (a ``SQLAlchemyError``) so callers that handle an unusable database
    (``ensure_database_schema``, ``app init-db``) handle this one too.
    """
    u = make_url(url)
    if is_memory(u) or not u.database or u.database.startswith("file:"):
        return
    folder = os.path.dirname(os.path.abspath(u.database))
    if not os.path.isdir(folder):
        raise ArgumentError(f"SQLite database folder does not exist: {folder} (from {u!r})")


def install_hooks(engine: Engine, *, busy_timeout_ms: int, synchronous: str) -> None:
    """Apply the SQLite invariants to every connection ``engine`` opens.

    The driver's own transaction handling is switched off so that SQLAlchemy's "begin"
    event can emit ``BEGIN IMMEDIATE``: a transaction that reads and later writes then
    holds the write lock from the start, and waits on ``busy_timeout`` instead of failing
    with "database is locked" when it would have to upgrade a stale WAL snapshot.
    """

    @event.listens_for(engine, "do_connect")
    def _connect_args(
        dialect: Any, conn_rec: ConnectionPoolEntry, cargs: Any, cparams: dict[str, Any]
    ) -> None:
        cparams["check_same_thread"] = False
        cparams["timeout"] = busy_timeout_ms / 1000

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, conn_rec: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        _pragma(dbapi_connection, f"busy_timeout = {int(busy_timeout_ms)}")
        _pragma(dbapi_connection, "journal_mode = WAL")
        _pragma(dbapi_connection, f"synchronous = {synchronous}")
        _pragma(dbapi_connection, "foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        mode = options.get(BEGIN_MODE, "IMMEDIATE")
        if mode not in _BEGIN_MODES:
            raise ValueError(f"{BEGIN_MODE} must be one of {_BEGIN_MODES}, got {mode!r}")
        # On the DBAPI cursor: a statement through SQLAlchemy costs several times more, on
        # every transaction. Its errors ("database is locked" past busy_timeout) are raised
        # as SQLAlchemy's, as they would be from a statement.
        statement = f"BEGIN {mode}"
        # query_only belongs to the DBAPI connection and stays as the last transaction left
        # it (its pool entry's info says which): it changes only when a transaction wants
        # the other mode, before its BEGIN (BEGIN IMMEDIATE fails on a query-only
        # connection). Setting it expires every statement the connection has prepared (as
        # every flag pragma does), so toggling it around each read would cost two statements
        # and a new prepare of the read's own.
        query_only = bool(options.get(QUERY_ONLY))
        info = conn.connection.info
        cursor = conn.connection.cursor()
        try:
            if info.get(QUERY_ONLY, False) != query_only:
                cursor.execute(f"PRAGMA query_only = {'ON' if query_only else 'OFF'}")
                info[QUERY_ONLY] = query_only
            cursor.execute(statement)
        except conn.dialect.loaded_dbapi.Error as error:
            base = conn.dialect.loaded_dbapi.Error
            raise DBAPIError.instance(statement, None, error, base) from error
        finally:
            cursor.close()


def _pragma(dbapi_connection: Any, pragma: str) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def shared_memory_url(url: str | URL) -> str:
    """One named in-memory database per process, shared by the sync and async engines."""
    u = make_url(url)
    return f"{u.drivername}:///file:app-memory-{os.getpid()}?mode=memory&cache=shared&uri=true"
