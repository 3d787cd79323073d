"""The FastAPI application: ``app.main:app``."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from sqlalchemy import Engine, text
from sqlalchemy.pool import AssertionPool, QueuePool, StaticPool

from app import sqlite
from app.config import Settings
from app.database import ensure_database_schema
from app.deps import Gate, ReadSession
from app.errors import install_error_handlers
from app.routers import items, users
from containers import container, dispose_engines

__all__ = ["app", "create_app"]


class Health(BaseModel):
    status: str


def _connection_capacity(engine: Engine, threads: int) -> int:
    """How many requests may hold a sync connection at once without waiting on the pool."""
    pool = engine.pool
    if isinstance(pool, StaticPool | AssertionPool):
        return 1
    if isinstance(pool, QueuePool) and pool._max_overflow >= 0:
        return min(pool.size() + pool._max_overflow, threads)
    return threads


def _create_schema(s: Settings, engine: Engine) -> bool:
    return s.CREATE_SCHEMA if s.CREATE_SCHEMA is not None else sqlite.is_sqlite(engine.url)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    s: Settings = container.settings()
    engine: Engine = container.engine()
    anyio.to_thread.current_default_thread_limiter().total_tokens = s.THREADPOOL_SIZE
    app.state.db_gate = Gate(_connection_capacity(engine, s.THREADPOOL_SIZE), s.DB_QUEUE_TIMEOUT)
    if _create_schema(s, engine):
        await anyio.to_thread.run_sync(ensure_database_schema)
    try:
        yield
    finally:
        await dispose_engines(container)


def create_app() -> FastAPI:
    container.wire(modules=[users, items])
    app = FastAPIOffline(
        title="Users and items",
        summary="FastAPI + SQLAlchemy 2, composed by a dependency-injector container",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(users.router)
    app.include_router(items.router)

    @app.get("/health", tags=["health"])
    def health(session: ReadSession) -> Health:
        """200 when the database answers, 503 otherwise."""
        session.execute(text("SELECT 1"))
        return Health(status="ok")

    return app


app = create_app()
