"""The FastAPI application: ``app.main:app``."""

from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline

from app import routers
from app.lifespan import lifespan, replicas_configured
from app.middleware.body_limit import BodyLimit
from app.middleware.conditional import ConditionalGet
from app.middleware.cors import add_cors
from app.middleware.read_your_writes import ReadYourWrites
from app.middleware.request_limit import RequestLimit
from app.middleware.telemetry import Telemetry
from app.runtime import Runtime
from app.web.errors import install_error_handlers
from app.web.openapi import declare_http_semantics
from containers import container

__all__ = ["app", "create_app"]

_NO_FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


def create_app() -> FastAPI:
    """The app for the container's current settings: ``AUTH_ENABLED`` decides its routes,
    ``MAX_BODY_BYTES``, ``CORS_ORIGINS`` and ``DATABASE_REPLICA_URLS`` its middleware."""
    s = container.settings()
    auth_enabled = s.AUTH_ENABLED
    app = FastAPIOffline(
        title="Users and items",
        summary="FastAPI + SQLAlchemy 2, composed by a dependency-injector container",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry spans would name the raw path and query and duplicate
        # the server span: app.observability.tracing makes this app's (docs/tracing.md).
        telemetry=_NO_FASTAPI_TELEMETRY,
    )
    runtime = app.state.runtime = Runtime(
        auth_enabled=auth_enabled, read_your_writes=replicas_configured(container)
    )
    install_error_handlers(app)
    if runtime.read_your_writes:
        app.add_middleware(ReadYourWrites)  # innermost: only the requests that get served
    app.add_middleware(ConditionalGet)  # HEAD and If-None-Match for every GET route
    app.add_middleware(RequestLimit, runtime=runtime)
    app.add_middleware(BodyLimit, max_bytes=s.MAX_BODY_BYTES)
    add_cors(app, s.CORS_ORIGINS)  # outside both: refusals get CORS headers
    app.add_middleware(Telemetry, runtime=runtime)  # outermost: it sees, labels and logs all
    routers.mount(app, auth_enabled=auth_enabled)
    generate = app.openapi
    ttl = s.IDEMPOTENCY_KEY_TTL_HOURS

    def declared() -> dict[str, Any]:
        schema = declare_http_semantics(generate(), idempotency_ttl_hours=ttl)
        return schema if auth_enabled else _without_auth(schema)

    app.openapi = declared  # type: ignore[method-assign]
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
