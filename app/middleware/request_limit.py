"""Load shedding: past MAX_CONCURRENT_REQUESTS per process, a request gets a 503 at once.

Without a limit a burst far past capacity queues every request: each waits its full
DB_QUEUE_TIMEOUT before its 503, the worker spends its CPU on requests that are already
lost, and good throughput collapses. Turning the excess away before any routing, parsing
or database work costs almost nothing, and the admitted requests are served at full speed.
The liveness probe and the metrics are never shed: a busy process is alive, and its metrics
are most wanted when it is busy.
"""

import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from app.exceptions import RETRY_AFTER_SECONDS
from app.observability import metrics
from app.runtime import Runtime

__all__ = ["UNLIMITED_PATHS", "RequestLimit"]

log = logging.getLogger("app")

_BODY = b'{"detail":"Server is busy, please retry"}'
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"retry-after", RETRY_AFTER_SECONDS.encode()),
]
_LOG_EVERY_SECONDS = 10.0
UNLIMITED_PATHS = frozenset({"/health/live", "/metrics"})


class RequestLimit:
    """ASGI middleware: at most ``runtime.max_concurrent_requests`` HTTP requests at once.

    The lifespan sets the limit from the settings; without it (no lifespan) nothing is shed.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.in_flight = 0
        self._shed = 0
        self._logged_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        limit = self.runtime.max_concurrent_requests
        if limit is not None and self.in_flight >= limit:
            await self._reject(limit, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _reject(self, limit: int, send: Send) -> None:
        self._shed += 1
        metrics.count_unavailable("request_limit")
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_SECONDS:
            log.warning(
                "overloaded: %d requests in progress, turning requests away with 503 "
                "(%d since the last message; MAX_CONCURRENT_REQUESTS=%d)",
                self.in_flight,
                self._shed,
                limit,
            )
            self._logged_at, self._shed = now, 0
        await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _BODY})
