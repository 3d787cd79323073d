"""The composition root: the only place that builds engines, session factories and services."""

import math
from functools import partial
from typing import Any, NamedTuple

from dependency_injector import containers, providers
from pwdlib import PasswordHash
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import AssertionPool, AsyncAdaptedQueuePool, QueuePool, StaticPool

from app import sqlite
from app.auth import Authenticator
from app.config import Settings, async_url, settings
from app.replicas import Replica, ReplicaSet
from app.security import Passwords, Tokens
from app.services import ItemService, UserService
from app.throttle import LoginThrottle
from app.transactions import Gate, Reader, Writer

__all__ = [
    "SERVER_CONCURRENT_UNITS",
    "SQLITE_CONCURRENT_READS",
    "SQLITE_CONCURRENT_WRITES",
    "Container",
    "Gates",
    "build_async_engine",
    "build_engine",
    "build_gates",
    "build_replica_engines",
    "build_replicas",
    "container",
    "dispose_engines",
    "inline_read_budget",
    "replicas_configured",
    "reset_request_path",
    "write_batch_size",
]


_LIBPQ_DRIVERS = ("psycopg", "psycopg_async", "psycopg2")
_PSYCOPG_DRIVERS = ("psycopg", "psycopg_async")


def _sync_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme == "postgresql" else url


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
    url, options = _engine_options(_sync_url(s.DATABASE_URL), s, is_async=False)
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
        url, options = _engine_options(_sync_url(replica_url), s, is_async=False)
        engines.append(create_engine(url, echo=s.ECHO_SQL, hide_parameters=True, **options))
    return engines


def build_replicas(s: Settings, primary: Engine, engines: list[Engine]) -> ReplicaSet | None:
    """The replicas that reads may run on, ``replica-1`` first; None without any: every
    read on the primary, as without this feature."""
    if not engines:
        return None
    replicas = [
        Replica(f"replica-{n}", engine, partial(Session, bind=engine, expire_on_commit=False))
        for n, engine in enumerate(engines, 1)
    ]
    return ReplicaSet(
        replicas,
        primary=primary,
        max_lag=s.DB_REPLICA_MAX_LAG_SECONDS,
        check_interval=s.DB_REPLICA_CHECK_SECONDS,
        metrics_enabled=s.METRICS_ENABLED,
    )


def _has(replicas: ReplicaSet | None) -> bool:
    return replicas is not None


SQLITE_CONCURRENT_READS = 2
"""Reads at once on SQLite by default: its reads are CPU work in this process, so more
threads only fight over the GIL."""
SQLITE_CONCURRENT_WRITES = 1
"""Writes at once on SQLite by default: it has one writer; the rest queue in the process."""
SERVER_CONCURRENT_UNITS = 4
"""Reads, and writes, at once on a database server by default: enough overlapping round
trips to keep one process busy; past that, threads only fight over the GIL (measured with
32 clients on PostgreSQL: 1.1 ms of CPU per read with 4, 2.3 ms with 15)."""


class Gates(NamedTuple):
    read: Gate
    write: Gate


def _gate(s: Settings, engine: Engine, wanted: int | None, sqlite_default: int) -> Gate:
    """A gate for ``wanted`` units of work at once (or the backend's default), but never
    more than the thread pool or the connection pool can serve."""
    if wanted is None:
        on_sqlite = engine.dialect.name == "sqlite"
        wanted = sqlite_default if on_sqlite else SERVER_CONCURRENT_UNITS
    pool = s.DB_POOL_SIZE + s.DB_MAX_OVERFLOW  # what both backends' sync pools hold
    return Gate(min(s.THREADPOOL_SIZE, wanted, pool), s.DB_QUEUE_TIMEOUT)


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


def inline_read_budget(s: Settings, engine: Engine) -> float | None:
    """Seconds of SQLite work a read may do on the event loop; None: reads use threads.

    Only for SQLite files: their reads are CPU work in this process and never wait for a
    lock. A server's reads wait on the network (threads overlap them); an in-memory
    database's one connection is shared with writers running in threads.
    """
    if engine.dialect.name != "sqlite" or isinstance(engine.pool, StaticPool | AssertionPool):
        return None
    return s.SQLITE_READ_ON_LOOP_MS / 1000 or None


def write_batch_size(s: Settings, engine: Engine) -> int:
    """Writes per transaction: SQLITE_WRITE_BATCH on SQLite, which runs one writer at a
    time anyway; elsewhere 1, since concurrent transactions serve more than one batch."""
    return s.SQLITE_WRITE_BATCH if engine.dialect.name == "sqlite" else 1


class Container(containers.DeclarativeContainer):
    """Settings flow into engine singletons, session factories and services."""

    settings = providers.Object(settings)

    engine = providers.ThreadSafeSingleton(build_engine, settings)
    async_engine = providers.ThreadSafeSingleton(build_async_engine, settings)

    session = providers.Factory(Session, bind=engine, expire_on_commit=False)
    async_session = providers.Factory(AsyncSession, bind=async_engine, expire_on_commit=False)

    # Read replicas (DATABASE_REPLICA_URLS): sync engines for Read units only; None without.
    replica_engines = providers.ThreadSafeSingleton(build_replica_engines, settings)
    replicas = providers.ThreadSafeSingleton(build_replicas, settings, engine, replica_engines)

    gates = providers.ThreadSafeSingleton(build_gates, settings, engine)
    reader = providers.ThreadSafeSingleton(
        Reader,
        gates.provided.read,
        session.provider,
        inline_budget=providers.Callable(inline_read_budget, settings, engine),
        replicas=replicas,
    )
    writer = providers.ThreadSafeSingleton(
        Writer,
        gates.provided.write,
        session.provider,
        batch_size=providers.Callable(write_batch_size, settings, engine),
        wal_positions=providers.Callable(_has, replicas),
    )

    password_hasher = providers.Singleton(PasswordHash.recommended)
    passwords = providers.ThreadSafeSingleton(Passwords, password_hasher)
    tokens = providers.ThreadSafeSingleton(
        Tokens,
        secret=settings.provided.SECRET_KEY,
        expire_minutes=settings.provided.ACCESS_TOKEN_EXPIRE_MINUTES,
    )

    user_service = providers.Factory(UserService, passwords=passwords)
    item_service = providers.Factory(ItemService)
    login_throttle = providers.ThreadSafeSingleton(
        LoginThrottle,
        secret=settings.provided.SECRET_KEY,
        max_failures=settings.provided.LOGIN_MAX_FAILURES,
        failure_window=settings.provided.LOGIN_FAILURE_WINDOW_SECONDS,
        max_attempts_per_minute=settings.provided.LOGIN_MAX_ATTEMPTS_PER_MINUTE,
    )
    authenticator = providers.ThreadSafeSingleton(
        Authenticator,
        reader,
        writer,
        user_service,
        passwords,
        tokens,
        throttle=login_throttle,
        enabled=settings.provided.AUTH_ENABLED,
    )


container = Container()


def replicas_configured(c: Container = container) -> bool:
    """Whether reads may go to replicas (DATABASE_REPLICA_URLS, or an override of
    ``replica_engines``), without building anything."""
    return bool(c.settings().DATABASE_REPLICA_URLS or c.replica_engines.overridden)


def reset_request_path(c: Container = container) -> None:
    """Build the singletons that requests use (the replica set, gates, units of work,
    password hashing, tokens, the login throttle, the authenticator) afresh at next use, from
    the current settings, engines and hasher: the app does this at startup, so it never
    serves with what a previous run built."""
    for provider in (
        c.replicas,
        c.gates,
        c.reader,
        c.writer,
        c.passwords,
        c.tokens,
        c.login_throttle,
        c.authenticator,
    ):
        provider.reset()


async def dispose_engines(c: Container = container) -> None:
    """Close the pools of the container's own engines; overrides belong to whoever set them."""
    if not c.replica_engines.overridden:
        for replica_engine in c.replica_engines():
            replica_engine.dispose()
        c.replica_engines.reset()
    if not c.async_engine.overridden:
        await c.async_engine().dispose()
        c.async_engine.reset()
    if not c.engine.overridden:
        c.engine().dispose()
        c.engine.reset()
