"""The one place that turns exceptions into HTTP answers."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc

from app.deps import DatabaseBusyError
from app.services import EmailAlreadyRegisteredError

__all__ = ["install_error_handlers"]

log = logging.getLogger("app")

_UNAVAILABLE = (
    DatabaseBusyError,
    exc.OperationalError,
    exc.InterfaceError,
    exc.TimeoutError,
    exc.DisconnectionError,
)
RETRY_AFTER_SECONDS = "1"


async def _email_taken(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": "Email already registered"}, status_code=400)


async def _conflict(request: Request, error: Exception) -> JSONResponse:
    log.info("integrity error on %s %s: %s", request.method, request.url.path, error)
    return JSONResponse({"detail": "Request conflicts with existing data"}, status_code=409)


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    # No stack trace: this is load or an outage, not a bug. The message may name the cause
    # ("database is locked", "connection refused") but never a password: SQLAlchemy hides it.
    log.warning(
        "database unavailable on %s %s: %s",
        request.method,
        request.url.path,
        str(error).splitlines()[0],
    )
    return JSONResponse(
        {"detail": "Database is busy or unavailable, please retry"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def _internal(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EmailAlreadyRegisteredError, _email_taken)
    app.add_exception_handler(exc.IntegrityError, _conflict)
    for error in _UNAVAILABLE:
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(Exception, _internal)
