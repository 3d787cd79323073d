"""Request ids, the access log and the request metrics, in one pure ASGI middleware.

Every request gets an id: the client's ``X-Request-ID`` when it is 1 to 128 characters of
``[A-Za-z0-9._-]``, a new one otherwise. It is echoed on the response, is ``request_id`` on
every log record made while serving the request (worker threads included), and ends the
request's one access-log line: method, route template, status, duration, time waited at the
gates, client address. With tracing on (``app.observability.tracing``), the request is also
a server span, current while it is served, named by its route template at the end.
"""

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import request_context
from app.observability import logs, metrics, tracing
from app.runtime import Runtime

__all__ = ["REQUEST_ID_HEADER", "UNMATCHED", "Telemetry", "route_template"]

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "<unmatched>"
"""The route of a request that no route matched, or that was shed before routing."""

_HEADER = REQUEST_ID_HEADER.lower().encode()
_VALID_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_TRACEPARENT = b"traceparent"
_VALID_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
access_log = logging.getLogger("app.access")


def route_template(scope: Scope) -> str:
    """``/users/{user_id}``: the matched route's path (routers carry their prefix)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _traced_route(route: str) -> str | None:
    return None if route == UNMATCHED else route


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _HEADER and _VALID_ID.fullmatch(value):
            return bytes(value).decode()
    return os.urandom(16).hex()  # what uuid4().hex draws, for a sixth of its cost


def _traceparent(scope: Scope) -> str | None:
    """The W3C trace context the request came with (tracing itself is for later)."""
    for name, value in scope["headers"]:
        if name == _TRACEPARENT and _VALID_TRACEPARENT.fullmatch(value):
            return bytes(value).decode()
    return None


class Telemetry:
    """ASGI middleware; the outermost of the app's, so that shed requests are seen too.

    Starlette answers an unhandled exception outside every middleware: that 500 gets its
    header from ``app.web.errors``, which reads the id from ``app.request_context``.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request = request_context.start(_request_id(scope), _traceparent(scope))
        header = (_HEADER, request.request_id.encode())
        status = 500  # unless a response starts: Starlette then answers the exception with one
        measured = self.runtime.metrics_enabled
        if measured:
            metrics.request_started()
        hooks = tracing.hooks
        span = None if hooks is None else hooks.request(scope, request)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if all(name.lower() != _HEADER for name, _ in headers):  # app.web.errors' 500s
                    headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as error:
            if span is not None:
                span.failed(error)
            raise
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            if measured:
                metrics.observe_request(scope["method"], route, status, seconds, request.gate_wait)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, route, status, seconds, request)
            if span is not None:
                span.end(_traced_route(route), status)


def _log_access(
    scope: Scope, route: str, status: int, seconds: float, request: request_context.RequestContext
) -> None:
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else "-"
    duration_ms = round(seconds * 1000, 2)
    gate_wait_ms = round(request.total_gate_wait * 1000, 2)
    handler = logs.access_handler(access_log)
    if handler is not None and handler.access(
        scope["method"], route, status, duration_ms, gate_wait_ms, address, request
    ):
        return  # app serve's handler, alone: the same line without logging's machinery
    access_log.info(
        "%s %s %d %.1f ms (gates %.1f ms) from %s",
        scope["method"],
        route,
        status,
        duration_ms,
        gate_wait_ms,
        address,
        extra={
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "gate_wait_ms": gate_wait_ms,
            "client": address,
        },
    )
