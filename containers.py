"""The composition root: the only place that builds engines, session factories and services."""

import math
from typing import Any, NamedTuple

from dependency_injector import containers, providers
from pwdlib import PasswordHash
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import AssertionPool, AsyncAdaptedQueuePool, QueuePool, StaticPool

from app import sqlite
from app.config import Settings, async_url, settings
from app.services import ItemService, UserService
from app.transactions import Gate, Reader, Writer

__all__ = [
    "SQLITE_CONCURRENT_READS",
    "SQLITE_CONCURRENT_WRITES",
    "Container",
    "Gates",
    "build_async_engine",
    "build_engine",
    "build_gates",
    "container",
    "dispose_engines",
    "reset_units",
]


_LIBPQ_DRIVERS = ("psycopg", "psycopg_async", "psycopg2")
_PSYCOPG_DRIVERS = ("psycopg", "psycopg_async")


def _sync_url(s: Settings) -> str:
    scheme, _, rest = s.DATABASE_URL.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme == "postgresql" else s.DATABASE_URL


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
    if not sqlite.is_sqlite(url):
        return url, _server_options(url, s)
    if sqlite.is_memory(url):
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
    if engine.dialect.name == "sqlite":
        sqlite.install_hooks(
            engine, busy_timeout_ms=s.SQLITE_BUSY_TIMEOUT_MS, synchronous=s.SQLITE_SYNCHRONOUS
        )


def build_engine(s: Settings) -> Engine:
    url, options = _engine_options(_sync_url(s), s, is_async=False)
    engine = create_engine(url, echo=s.ECHO_SQL, hide_parameters=True, **options)
    _install_sqlite_hooks(engine, s)
    return engine


def build_async_engine(s: Settings) -> AsyncEngine:
    url, options = _engine_options(async_url(s), s, is_async=True)
    engine = create_async_engine(url, echo=s.ECHO_SQL, hide_parameters=True, **options)
    _install_sqlite_hooks(engine.sync_engine, s)
    return engine


SQLITE_CONCURRENT_READS = 2
"""Reads at once on SQLite by default: its reads are CPU work in this process, so more
threads only fight over the GIL."""
SQLITE_CONCURRENT_WRITES = 1
"""Writes at once on SQLite by default: it has one writer; the rest queue in the process."""


class Gates(NamedTuple):
    read: Gate
    write: Gate


def _gate(s: Settings, engine: Engine, wanted: int | None, sqlite_default: int) -> Gate:
    """A gate for ``wanted`` units of work at once (or the backend's default), but never
    more than the thread pool or the connection pool can serve."""
    if wanted is None and engine.dialect.name == "sqlite":
        wanted = sqlite_default
    pool = s.DB_POOL_SIZE + s.DB_MAX_OVERFLOW  # what both backends' sync pools hold
    return Gate(min(s.THREADPOOL_SIZE, wanted or pool, pool), s.DB_QUEUE_TIMEOUT)


def build_gates(s: Settings, engine: Engine) -> Gates:
    """The read gate and the write gate in front of ``engine``, sized from the settings."""
    if isinstance(engine.pool, StaticPool | AssertionPool):
        # One connection, handed out without waiting: one unit of work at a time, any kind.
        one = Gate(1, s.DB_QUEUE_TIMEOUT)
        return Gates(one, one)
    return Gates(
        read=_gate(s, engine, s.MAX_CONCURRENT_READS, SQLITE_CONCURRENT_READS),
        write=_gate(s, engine, s.MAX_CONCURRENT_WRITES, SQLITE_CONCURRENT_WRITES),
    )


class Container(containers.DeclarativeContainer):
    """Settings flow into engine singletons, session factories and services."""

    settings = providers.Object(settings)

    engine = providers.ThreadSafeSingleton(build_engine, settings)
    async_engine = providers.ThreadSafeSingleton(build_async_engine, settings)

    session = providers.Factory(Session, bind=engine, expire_on_commit=False)
    async_session = providers.Factory(AsyncSession, bind=async_engine, expire_on_commit=False)

    gates = providers.ThreadSafeSingleton(build_gates, settings, engine)
    reader = providers.ThreadSafeSingleton(Reader, gates.provided.read, session.provider)
    writer = providers.ThreadSafeSingleton(Writer, gates.provided.write, session.provider)

    password_hasher = providers.Singleton(PasswordHash.recommended)
    user_service = providers.Factory(UserService, hasher=password_hasher)
    item_service = providers.Factory(ItemService)


container = Container()


def reset_units(c: Container = container) -> None:
    """Build the gates and units of work afresh at next use, from the current settings and
    engine: the app does this at startup, so it never serves with a previous run's gates."""
    for provider in (c.gates, c.reader, c.writer):
        provider.reset()


async def dispose_engines(c: Container = container) -> None:
    """Close the pools of the container's own engines; overrides belong to whoever set them."""
    if not c.async_engine.overridden:
        await c.async_engine().dispose()
        c.async_engine.reset()
    if not c.engine.overridden:
        c.engine().dispose()
        c.engine.reset()
