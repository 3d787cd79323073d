"""Read-your-writes with replicas: the WAL position a client brings, and the one its writes
leave on the response.

A response to a request that wrote carries the primary's WAL position after the commit in
``X-Wal-Position`` and in the ``wal_position`` cookie; a client that sends either back
(the larger, if both) has its reads served by a replica only once it has replayed that far,
else by the primary. A value that is not an LSN (``16/B374D848``) is ignored.
"""

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import request_context
from app.observability import tracing
from app.replicas.positions import format_lsn, parse_lsn

__all__ = ["COOKIE", "HEADER", "ReadYourWrites", "brought_position"]

HEADER = "X-Wal-Position"
COOKIE = "wal_position"

_HEADER = HEADER.lower().encode()
_COOKIE_VALUE = re.compile(rb"(?:^|;)\s*" + COOKIE.encode() + rb"=([^;]*)")


def brought_position(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The largest well-formed position in the request's header and cookies, or None."""
    found: list[int] = []
    for name, value in headers:
        if name == _HEADER:
            candidates = [value.strip()]
        elif name == b"cookie":
            candidates = [match.strip() for match in _COOKIE_VALUE.findall(value)]
        else:
            continue
        for candidate in candidates:
            position = parse_lsn(candidate.decode("latin-1"))
            if position is not None:
                found.append(position)
    return max(found, default=None)


class ReadYourWrites:
    """ASGI middleware, inside ``app.middleware.telemetry``'s (it needs the request's context);
    installed only when replicas are configured."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = request_context.current() if scope["type"] == "http" else None
        if request is None:
            await self.app(scope, receive, send)
            return
        brought = request.wal_position = brought_position(scope["headers"])
        hooks = tracing.hooks
        if hooks is not None:
            hooks.brought_position(None if brought is None else format_lsn(brought))
        secure = b"; Secure" if scope.get("scheme") == "https" else b""

        async def send_position(message: Message) -> None:
            position = request.wal_position
            if message["type"] == "http.response.start" and position != brought:
                assert position is not None  # it only ever grows
                value = format_lsn(position).encode()
                cookie = COOKIE.encode() + b"=" + value + b"; HttpOnly; Path=/; SameSite=Lax"
                headers = [
                    *message.get("headers", ()),
                    (_HEADER, value),
                    (b"set-cookie", cookie + secure),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_position)
