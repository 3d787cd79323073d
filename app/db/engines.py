"""The engines the container builds, and their options: pool sizes, timeouts, SQLite hooks."""

import math
from typing import Any

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AssertionPool, AsyncAdaptedQueuePool, QueuePool, StaticPool

from app.config import Settings, async_url
from app.db import sqlite
from app.db.urls import backend, is_memory, sync_url

__all__ = [
    "build_async_engine",
    "build_engine",
    "build_replica_engines",
    "has_one_connection",
]

_LIBPQ_DRIVERS = ("psycopg", "psycopg_async", "psycopg2")
_PSYCOPG_DRIVERS = ("psycopg", "psycopg_async")


def _server_options(url: str, s: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "pool_size": s.DB_POOL_SIZE,
        "max_overflow": s.DB_MAX_OVERFLOW,
        "pool_timeout": s.DB_QUEUE_TIMEOUT,
        "pool_pre_ping": s.DB_POOL_PRE_PING,
        "pool_recycle": s.DB_POOL_RECYCLE,
    }
    u = make_url(url)
    connect_args: dict[str, Any] = {}
    if u.get_driver_name() in _LIBPQ_DRIVERS and "connect_timeout" not in u.query:
        # libpq waits for a server that does not answer as long as the OS lets it (minutes
        # or forever): give up after about DB_QUEUE_TIMEOUT so the request gets its 503.
        connect_args["connect_timeout"] = math.ceil(s.DB_QUEUE_TIMEOUT)
    if u.get_driver_name() in _PSYCOPG_DRIVERS:
        connect_args["prepare_threshold"] = s.DB_PREPARE_THRESHOLD
    if connect_args:
        options["connect_args"] = connect_args
    return options


def _engine_options(url: str, s: Settings, *, is_async: bool) -> tuple[str, dict[str, Any]]:
    if backend(url) != "sqlite":
        return url, _server_options(url, s)
    if is_memory(url):
        return sqlite.shared_memory_url(url), {"poolclass": StaticPool}
    sqlite.check_database_folder(url)
    if is_async:
        # One connection per process: async writers (scripts, jobs on AsyncSessionLocal)
        # queue in the process, bounded by DB_QUEUE_TIMEOUT, before they reach SQLite's lock.
        return url, {
            "poolclass": AsyncAdaptedQueuePool,
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": s.DB_QUEUE_TIMEOUT,
        }
    # The same capacity, all of it kept: an overflow connection would be closed on return and
    # reopened (connect, pragmas, WAL check) by the next burst, several times a second.
    return url, {
        "poolclass": QueuePool,
        "pool_size": s.DB_POOL_SIZE + s.DB_MAX_OVERFLOW,
        "max_overflow": 0,
        "pool_timeout": s.DB_QUEUE_TIMEOUT,
    }


def _install_sqlite_hooks(engine: Engine, s: Settings) -> None:
    if backend(engine) == "sqlite":
        sqlite.install_hooks(
            engine, busy_timeout_ms=s.SQLITE_BUSY_TIMEOUT_MS, synchronous=s.SQLITE_SYNCHRONOUS
        )


def build_engine(s: Settings) -> Engine:
    url, options = _engine_options(sync_url(s.DATABASE_URL), s, is_async=False)
    engine = create_engine(url, echo=s.ECHO_SQL, hide_parameters=True, **options)
    _install_sqlite_hooks(engine, s)
    return engine


def build_async_engine(s: Settings) -> AsyncEngine:
    url, options = _engine_options(async_url(s), s, is_async=True)
    engine = create_async_engine(url, echo=s.ECHO_SQL, hide_parameters=True, **options)
    _install_sqlite_hooks(engine.sync_engine, s)
    return engine


def build_replica_engines(s: Settings) -> list[Engine]:
    """A sync engine per DATABASE_REPLICA_URLS entry, with the primary's options: pool,
    pre-ping, connect timeout, DB_PREPARE_THRESHOLD, hidden parameters."""
    engines = []
    for replica_url in s.DATABASE_REPLICA_URLS:
        url, options = _engine_options(sync_url(replica_url), s, is_async=False)
        engines.append(create_engine(url, echo=s.ECHO_SQL, hide_parameters=True, **options))
    return engines


def has_one_connection(engine: Engine) -> bool:
    """The engine's pool holds one connection, handed out without waiting (an in-memory
    SQLite database, or a test's ``AssertionPool``)."""
    return isinstance(engine.pool, StaticPool | AssertionPool)
