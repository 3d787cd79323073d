"""The FastAPI application: ``app.main:app``."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import AssertionPool, QueuePool, StaticPool

from app import migrations
from app.admission import RequestLimit
from app.config import Settings
from app.database import ensure_database_schema
from app.deps import Gate, Read, Reader, Writer
from app.errors import install_error_handlers
from app.routers import items, users
from app.sqlite import is_sqlite
from containers import container, dispose_engines

__all__ = ["app", "create_app"]


class Health(BaseModel):
    status: str


def _pool_capacity(engine: Engine) -> int | None:
    """How many connections the pool hands out at once; None when it has no bound."""
    pool = engine.pool
    if isinstance(pool, QueuePool) and pool._max_overflow >= 0:
        return pool.size() + pool._max_overflow
    return None


SQLITE_CONCURRENT_READS = 2
"""Reads at once on SQLite by default: more threads only fight over the GIL."""
SQLITE_CONCURRENT_WRITES = 1
"""Writes at once on SQLite by default: it has one writer; the rest queue in the process."""


def _capacity(s: Settings, engine: Engine, wanted: int | None, sqlite_default: int) -> int:
    """How many units of work may run at once: as ``wanted`` (or the backend's default),
    but never more than the thread pool or the connection pool can serve."""
    if wanted is None and is_sqlite(engine.url):
        wanted = sqlite_default
    limits = [s.THREADPOOL_SIZE, wanted, _pool_capacity(engine)]
    return min(limit for limit in limits if limit is not None)


def _gates(s: Settings, engine: Engine) -> tuple[Gate, Gate]:
    """The read gate and the write gate in front of ``engine``."""
    if isinstance(engine.pool, StaticPool | AssertionPool):
        # One connection, handed out without waiting: one unit of work at a time, any kind.
        one = Gate(1, s.DB_QUEUE_TIMEOUT)
        return one, one
    reads = _capacity(s, engine, s.MAX_CONCURRENT_READS, SQLITE_CONCURRENT_READS)
    writes = _capacity(s, engine, s.MAX_CONCURRENT_WRITES, SQLITE_CONCURRENT_WRITES)
    return Gate(reads, s.DB_QUEUE_TIMEOUT), Gate(writes, s.DB_QUEUE_TIMEOUT)


def _log_concurrency(s: Settings, reads: Gate, writes: Gate) -> None:
    # uvicorn's server log, next to "Application startup complete": visible by default.
    logging.getLogger("uvicorn.error").info(
        "concurrency: %d requests at once (MAX_CONCURRENT_REQUESTS), %d threads "
        "(THREADPOOL_SIZE), %d reads (MAX_CONCURRENT_READS) and %d writes "
        "(MAX_CONCURRENT_WRITES) at once, %gs longest wait for either (DB_QUEUE_TIMEOUT)",
        s.MAX_CONCURRENT_REQUESTS,
        s.THREADPOOL_SIZE,
        reads.capacity,
        writes.capacity,
        s.DB_QUEUE_TIMEOUT,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    s: Settings = container.settings()
    engine: Engine = container.engine()
    anyio.to_thread.current_default_thread_limiter().total_tokens = s.THREADPOOL_SIZE
    reads, writes = _gates(s, engine)
    app.state.reader, app.state.writer = Reader(reads), Writer(writes)
    app.state.max_concurrent_requests = s.MAX_CONCURRENT_REQUESTS
    _log_concurrency(s, reads, writes)
    setup = migrations.schema_setup(s, engine.url)
    if setup == "migrate":
        await anyio.to_thread.run_sync(migrations.upgrade)
    elif setup == "create_all":
        await anyio.to_thread.run_sync(ensure_database_schema)
    try:
        yield
    finally:
        await dispose_engines(container)


def _ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


def create_app() -> FastAPI:
    container.wire(modules=[users, items])
    app = FastAPIOffline(
        title="Users and items",
        summary="FastAPI + SQLAlchemy 2, composed by a dependency-injector container",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestLimit)
    app.include_router(users.router)
    app.include_router(items.router)

    @app.get("/health", tags=["health"])
    async def health(read: Read) -> Health:
        """200 when the database answers, 503 otherwise."""
        await read(_ping)
        return Health(status="ok")

    return app


app = create_app()
