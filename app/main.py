"""The FastAPI application: ``app.main:app``."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any, cast

import anyio.to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine

from app import migrations, routers
from app.admission import RequestLimit
from app.body_limit import BodyLimit
from app.config import Settings
from app.consistency import ReadYourWrites
from app.cors import add_cors
from app.database import ensure_database_schema
from app.errors import install_error_handlers
from app.serving import monitoring, serving
from app.telemetry import Telemetry
from app.transactions import Reader, Writer
from containers import container, dispose_engines, replicas_configured, reset_request_path

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
    reset_request_path(container)
    s: Settings = container.settings()
    if app.state.auth_enabled != s.AUTH_ENABLED:
        raise RuntimeError(
            f"this app was created with AUTH_ENABLED={app.state.auth_enabled}, and the "
            f"settings now say {s.AUTH_ENABLED}: call create_app() with the settings in place"
        )
    if container.replicas() is not None and not app.state.read_your_writes:
        raise RuntimeError(
            "this app was created without replicas, and the container now has some: call "
            "create_app() with DATABASE_REPLICA_URLS (or the replica_engines override) in place"
        )
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
            async with monitoring(container.replicas()):
                yield
        finally:
            await dispose_engines(container)


def create_app() -> FastAPI:
    """The app for the container's current settings: ``AUTH_ENABLED`` decides its routes,
    ``MAX_BODY_BYTES``, ``CORS_ORIGINS`` and ``DATABASE_REPLICA_URLS`` its middleware."""
    auth_enabled = container.settings().AUTH_ENABLED
    app = FastAPIOffline(
        title="Users and items",
        summary="FastAPI + SQLAlchemy 2, composed by a dependency-injector container",
        lifespan=lifespan,
    )
    app.state.auth_enabled = auth_enabled
    app.state.read_your_writes = replicas_configured(container)
    install_error_handlers(app)
    if app.state.read_your_writes:
        app.add_middleware(ReadYourWrites)  # innermost: only the requests that get served
    app.add_middleware(RequestLimit)
    app.add_middleware(BodyLimit, max_bytes=container.settings().MAX_BODY_BYTES)
    add_cors(app, container.settings().CORS_ORIGINS)  # outside both: refusals get CORS headers
    app.add_middleware(Telemetry)  # outermost: it sees, labels and logs every request
    routers.mount(app, auth_enabled=auth_enabled)
    if not auth_enabled:
        generate = app.openapi
        app.openapi = lambda: _without_auth(generate())  # type: ignore[method-assign]
    return app


def _without_auth(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as clients of an open service see it: no bearer scheme, no 401 or 403.

    The endpoints declare their security dependency once, for both modes; with auth off it
    lets every request through, so the schema must not ask for a token.
    """
    schema.get("components", {}).pop("securitySchemes", None)
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
            for status in ("401", "403"):
                operation.get("responses", {}).pop(status, None)
    return schema


app = create_app()
