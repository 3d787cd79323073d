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
from app.deps import Gate, Read, Reader
from app.errors import install_error_handlers
from app.routers import items, users
from app.sqlite import is_sqlite
from containers import container, dispose_engines

__all__ = ["app", "create_app"]

log = logging.getLogger("app")


class Health(BaseModel):
    status: str


def _pool_capacity(engine: Engine) -> int | None:
    """How many connections the pool hands out at once; None when it has no bound."""
    pool = engine.pool
    if isinstance(pool, StaticPool | AssertionPool):
        return 1
    if isinstance(pool, QueuePool) and pool._max_overflow >= 0:
        return pool.size() + pool._max_overflow
    return None


SQLITE_CONCURRENT_READS = 2
"""Reads at once on SQLite unless MAX_CONCURRENT_READS says otherwise (docs/concurrency.md)."""


def _read_capacity(s: Settings, engine: Engine) -> int:
    """How many reads may hold a thread and a sync connection at once.

    Never more than the threads or the pool can serve, so an admitted read never waits.
    """
    wanted = s.MAX_CONCURRENT_READS
    if wanted is None and is_sqlite(engine.url):
        wanted = SQLITE_CONCURRENT_READS
    limits = [s.THREADPOOL_SIZE, wanted, _pool_capacity(engine)]
    return min(limit for limit in limits if limit is not None)


def _log_concurrency(s: Settings, engine: Engine, reads: Gate) -> None:
    # uvicorn's server log, next to "Application startup complete": visible by default.
    logging.getLogger("uvicorn.error").info(
        "concurrency: %d requests at once (MAX_CONCURRENT_REQUESTS), %d threads "
        "(THREADPOOL_SIZE), %d reads at once (MAX_CONCURRENT_READS), %s async connections "
        "(writers), %gs longest wait for a connection (DB_QUEUE_TIMEOUT)",
        s.MAX_CONCURRENT_REQUESTS,
        s.THREADPOOL_SIZE,
        reads.capacity,
        _pool_capacity(container.async_engine().sync_engine) or "unbounded",
        s.DB_QUEUE_TIMEOUT,
    )
    pool_capacity = _pool_capacity(engine)
    if pool_capacity is not None and pool_capacity > s.THREADPOOL_SIZE == reads.capacity:
        log.warning(
            "the sync pool holds %d connections but THREADPOOL_SIZE is %d: "
            "at most %d sync sessions run at once",
            pool_capacity,
            s.THREADPOOL_SIZE,
            reads.capacity,
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    s: Settings = container.settings()
    engine: Engine = container.engine()
    anyio.to_thread.current_default_thread_limiter().total_tokens = s.THREADPOOL_SIZE
    gate = Gate(_read_capacity(s, engine), s.DB_QUEUE_TIMEOUT)
    app.state.reader = Reader(gate)
    app.state.max_concurrent_requests = s.MAX_CONCURRENT_REQUESTS
    _log_concurrency(s, engine, gate)
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
