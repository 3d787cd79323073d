"""The FastAPI application: ``app.main:app``."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import cast

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine

from app import migrations, routers
from app.admission import RequestLimit
from app.config import Settings
from app.database import ensure_database_schema
from app.errors import install_error_handlers
from app.serving import serving
from app.telemetry import Telemetry
from app.transactions import Reader, Writer
from containers import container, dispose_engines, reset_units

__all__ = ["app", "create_app", "lifespan"]


def _log_concurrency(s: Settings, reader: Reader, writer: Writer) -> None:
    # uvicorn's server log, next to "Application startup complete": visible by default.
    logging.getLogger("uvicorn.error").info(
        "concurrency: %d requests at once (MAX_CONCURRENT_REQUESTS), %d threads "
        "(THREADPOOL_SIZE), %d reads (MAX_CONCURRENT_READS) and %d writes "
        "(MAX_CONCURRENT_WRITES) at once, %gs longest wait for either (DB_QUEUE_TIMEOUT)",
        s.MAX_CONCURRENT_REQUESTS,
        s.THREADPOOL_SIZE,
        reader.gate.capacity,
        writer.gate.capacity,
        s.DB_QUEUE_TIMEOUT,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Wire the routers and size the request path from the container's current state,
    prepare the schema, serve (``app.serving``), and dispose of the engines at shutdown."""
    # At every startup, not once at import: a test that unwired the container, or changed
    # its settings or engine, gets an app that serves with what the container holds now.
    if routers not in cast(list[ModuleType], container.wired_to_packages):
        container.wire(packages=[routers], warn_unresolved=True)
    reset_units(container)
    s: Settings = container.settings()
    engine: Engine = container.engine()
    anyio.to_thread.current_default_thread_limiter().total_tokens = s.THREADPOOL_SIZE
    app.state.max_concurrent_requests = s.MAX_CONCURRENT_REQUESTS
    _log_concurrency(s, container.reader(), container.writer())
    setup = migrations.schema_setup(s, engine.url)
    if setup == "migrate":
        await anyio.to_thread.run_sync(migrations.upgrade)
    elif setup == "create_all":
        await anyio.to_thread.run_sync(ensure_database_schema)
    with serving(app, s, container):
        try:
            yield
        finally:
            await dispose_engines(container)


def create_app() -> FastAPI:
    app = FastAPIOffline(
        title="Users and items",
        summary="FastAPI + SQLAlchemy 2, composed by a dependency-injector container",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestLimit)
    app.add_middleware(Telemetry)  # outermost: it sees and labels the requests shed too
    for router in routers.ROUTERS:
        app.include_router(router)
    return app


app = create_app()
