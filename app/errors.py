"""The one place that turns exceptions into HTTP answers."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc

from app import context, metrics
from app.exceptions import (
    DatabaseBusyError,
    EmailAlreadyRegisteredError,
    ShuttingDownError,
    WriteInReadError,
)

__all__ = ["install_error_handlers"]

log = logging.getLogger("app")

_UNAVAILABLE = (
    DatabaseBusyError,
    exc.OperationalError,
    exc.InterfaceError,
    # What psycopg raises when PgBouncer loses its server during a COMMIT ("received 2
    # results from command 'COMMIT'"), and PostgreSQL's own XX000: the database, not the
    # request, is at fault.
    exc.InternalError,
    exc.TimeoutError,
    exc.DisconnectionError,
)
RETRY_AFTER_SECONDS = "1"


async def _email_taken(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": "Email already registered"}, status_code=400)


async def _conflict(request: Request, error: Exception) -> JSONResponse:
    log.info("integrity error on %s: %s", _endpoint(request), error)
    return JSONResponse({"detail": "Request conflicts with existing data"}, status_code=409)


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    # No stack trace: this is load or an outage, not a bug. The message may name the cause
    # ("database is locked", "connection refused") but never a password: SQLAlchemy hides it.
    log.warning("database unavailable on %s: %s", _endpoint(request), str(error).splitlines()[0])
    metrics.count_unavailable(
        "gate_timeout" if isinstance(error, DatabaseBusyError) else "database_unavailable"
    )
    return JSONResponse(
        {"detail": "Database is busy or unavailable, please retry"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def _endpoint(request: Request) -> str:
    """``GET /users/{user_id} (read_user)``: the route template, never the raw path."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    name = getattr(route, "name", "?")
    return f"{request.method} {path} ({name})"


async def _write_in_read(request: Request, error: Exception) -> JSONResponse:
    # A bug in the endpoint, caught before anything was committed or silently dropped.
    log.error("write attempted in a read transaction by %s: %s", _endpoint(request), error)
    return await _internal(request, error)


async def _internal(request: Request, error: Exception) -> JSONResponse:
    # Starlette answers unhandled exceptions outside the middleware that adds the header.
    request_id = context.request_id()
    headers = {"X-Request-ID": request_id} if request_id else None
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500, headers=headers)


async def _shutting_down(request: Request, error: Exception) -> JSONResponse:
    metrics.count_unavailable("draining")
    return JSONResponse(
        {"detail": "Server is shutting down"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EmailAlreadyRegisteredError, _email_taken)
    app.add_exception_handler(WriteInReadError, _write_in_read)
    app.add_exception_handler(exc.IntegrityError, _conflict)
    for error in _UNAVAILABLE:
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(ShuttingDownError, _shutting_down)
    app.add_exception_handler(Exception, _internal)
