"""The one place that turns exceptions into HTTP answers, and declares them in OpenAPI."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import exc
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app import request_context
from app.exceptions import (
    DATABASE_FAILURES,
    RETRY_AFTER_SECONDS,
    CurrentPasswordError,
    DatabaseBusyError,
    EmailAlreadyRegisteredError,
    IdempotencyKeyInProgressError,
    IdempotencyKeyReusedError,
    IdempotentReplay,
    InactiveUserError,
    IncorrectLoginError,
    LoginThrottledError,
    NotAuthenticatedError,
    PermissionDeniedError,
    PreconditionFailedError,
    ShuttingDownError,
    WriteInReadError,
)
from app.observability import metrics
from app.schemas import HTTPError
from app.web.idempotency import HEADER, REUSED, replay
from app.web.redaction import redacted, secret_names

__all__ = ["BODY_ERRORS", "install_error_handlers", "responses"]

log = logging.getLogger("app")

_UNAVAILABLE: tuple[type[Exception], ...] = (DatabaseBusyError, *DATABASE_FAILURES)
_BEARER = {"WWW-Authenticate": "Bearer"}

_RESPONSES: dict[int, dict[str, Any]] = {
    400: {
        "description": "The body cannot be parsed, or the request conflicts with the rules "
        "(e-mail taken, inactive user, current_password missing or wrong)"
    },
    401: {
        "description": "No valid bearer token (or, at /token, wrong e-mail or password)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"description": "The resource belongs to someone else"},
    404: {"description": "No such resource"},
    409: {"description": "The request conflicts with existing data"},
    412: {
        "description": "If-Match names a version the resource no longer has; nothing changed",
        "headers": {"ETag": {"schema": {"type": "string"}, "description": "the current one"}},
    },
    413: {"description": "The request body is larger than MAX_BODY_BYTES; it was not read"},
    429: {
        "description": "Too many logins for this e-mail or from this address; retry later",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
    503: {
        "description": "The database is busy or unavailable; nothing changed, retry",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


BODY_ERRORS = (400, 413)
"""What any operation that takes a body may answer besides FastAPI's 422: a body that cannot
be parsed (400), one larger than MAX_BODY_BYTES (413)."""


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the ``HTTPError`` body."""
    return {status: {"model": HTTPError, **_RESPONSES[status]} for status in statuses}


def _detail(detail: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _email_taken(request: Request, error: Exception) -> JSONResponse:
    return _detail("Email already registered", 400)


async def _not_authenticated(request: Request, error: Exception) -> JSONResponse:
    return _detail(str(error), 401, _BEARER)


async def _incorrect_login(request: Request, error: Exception) -> JSONResponse:
    return _detail("Incorrect username or password", 401, _BEARER)


async def _throttled(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, LoginThrottledError)
    retry_after = {"Retry-After": str(error.retry_after)}
    return _detail("Too many login attempts, retry later", 429, retry_after)


async def _current_password(request: Request, error: Exception) -> JSONResponse:
    return _detail(str(error), 400)


async def _inactive(request: Request, error: Exception) -> JSONResponse:
    return _detail("Inactive user", 400)


async def _forbidden(request: Request, error: Exception) -> JSONResponse:
    return _detail("Not enough permissions", 403)


async def _precondition_failed(request: Request, error: Exception) -> JSONResponse:
    # A concurrent change that the row lock did not serialize ends here too (StaleDataError).
    current = str(error) if isinstance(error, PreconditionFailedError) else ""
    return _detail(
        "The resource has changed since it was read; fetch it again",
        412,
        {"ETag": current} if current else None,
    )


async def _conflict(request: Request, error: Exception) -> JSONResponse:
    log.info("integrity error on %s: %s", _endpoint(request), error)
    return _detail("Request conflicts with existing data", 409)


async def _replay(request: Request, error: Exception) -> Response:
    assert isinstance(error, IdempotentReplay)
    return replay(error)


async def _key_reused(request: Request, error: Exception) -> JSONResponse:
    # FastAPI's 422 shape, which every operation declares already.
    reused = {"type": "idempotency_key_reused", "loc": ["header", HEADER], "msg": REUSED}
    return JSONResponse({"detail": [reused]}, status_code=422)


async def _key_in_progress(request: Request, error: Exception) -> JSONResponse:
    return _detail(
        "A request with this Idempotency-Key is still being processed; retry later",
        409,
        {"Retry-After": RETRY_AFTER_SECONDS},
    )


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    # No stack trace: this is load or an outage, not a bug. The message may name the cause
    # ("database is locked", "connection refused") but never a password: SQLAlchemy hides it.
    log.warning("database unavailable on %s: %s", _endpoint(request), str(error).splitlines()[0])
    metrics.count_unavailable(
        "gate_timeout" if isinstance(error, DatabaseBusyError) else "database_unavailable"
    )
    return _detail(
        "Database is busy or unavailable, please retry",
        503,
        {"Retry-After": RETRY_AFTER_SECONDS},
    )


def _endpoint(request: Request) -> str:
    """``GET /users/{user_id} (read_user)``: the route template, never the raw path."""
    route = request.scope.get("route")
    path = getattr(route, "path", "<unmatched>")
    name = getattr(route, "name", "?")
    return f"{request.method} {path} ({name})"


async def _write_in_read(request: Request, error: Exception) -> JSONResponse:
    # A bug in the endpoint, caught before anything was committed or silently dropped.
    log.error("write attempted in a read transaction by %s: %s", _endpoint(request), error)
    return await _internal(request, error)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    # FastAPI's 422, without the value of any secret field and with every input cut short.
    assert isinstance(error, RequestValidationError)
    route = request.scope.get("route")
    secrets = secret_names(route.dependant) if isinstance(route, APIRoute) else frozenset()
    return JSONResponse({"detail": redacted(error.errors(), secrets)}, status_code=422)


async def _not_found(request: Request, error: Exception) -> Response:
    """A route's own 404; or, where no route matched, Starlette's slash redirect made safe:
    ``POST /users`` -> 307 to ``/users/``, a relative ``Location`` (Starlette builds an
    absolute one from the ``Host`` header, which the client sent and nobody vouched for)."""
    detail = error.detail if isinstance(error, HTTPException) else "Not Found"
    if "endpoint" in request.scope:  # a route answered 404 itself
        return _detail(detail, 404)
    root = request.scope.get("root_path", "")
    path = request.scope["path"].removeprefix(root)
    other = path.removesuffix("/") if path.endswith("/") else f"{path}/"
    if other and any(
        route.matches({**request.scope, "path": other})[0] == Match.FULL
        for route in request.app.router.routes
    ):
        query = request.scope.get("query_string", b"").decode("latin-1")
        location = f"{root}{other}" + (f"?{query}" if query else "")
        return Response(status_code=307, headers={"Location": location})
    return _detail(detail, 404)


async def _method_not_allowed(request: Request, error: Exception) -> JSONResponse:
    # Starlette's Allow names the methods of the first route on the path; RFC 9110 wants
    # every method the resource supports (HEAD wherever GET: app.middleware.conditional).
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            allowed |= route.methods
    if "GET" in allowed:
        allowed.add("HEAD")
    detail = error.detail if isinstance(error, HTTPException) else "Method Not Allowed"
    return _detail(detail, 405, {"Allow": ", ".join(sorted(allowed))})


async def _internal(request: Request, error: Exception) -> JSONResponse:
    # Starlette answers unhandled exceptions outside the middleware that adds the header.
    request_id = request_context.request_id()
    return _detail(
        "Internal Server Error", 500, {"X-Request-ID": request_id} if request_id else None
    )


async def _shutting_down(request: Request, error: Exception) -> JSONResponse:
    metrics.count_unavailable("draining")
    return _detail("Server is shutting down", 503, {"Retry-After": RETRY_AFTER_SECONDS})


def install_error_handlers(app: FastAPI) -> None:
    handlers = {
        EmailAlreadyRegisteredError: _email_taken,
        NotAuthenticatedError: _not_authenticated,
        IncorrectLoginError: _incorrect_login,
        LoginThrottledError: _throttled,
        InactiveUserError: _inactive,
        CurrentPasswordError: _current_password,
        PermissionDeniedError: _forbidden,
        PreconditionFailedError: _precondition_failed,
        StaleDataError: _precondition_failed,
        WriteInReadError: _write_in_read,
        RequestValidationError: _invalid_request,
        ShuttingDownError: _shutting_down,
        IdempotentReplay: _replay,
        IdempotencyKeyReusedError: _key_reused,
        IdempotencyKeyInProgressError: _key_in_progress,
        exc.IntegrityError: _conflict,
        **dict.fromkeys(_UNAVAILABLE, _unavailable),
        Exception: _internal,
    }
    for error, handler in handlers.items():
        app.add_exception_handler(error, handler)
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _method_not_allowed)
    app.router.redirect_slashes = False  # _not_found redirects, with a relative Location
