"""HEAD on every GET route, and ``If-None-Match`` on every response that has an ``ETag``
(RFC 9110, sections 9.3.2 and 13.1.2), in one place: no route does anything for them.

A HEAD request is routed as the GET it mirrors and answered with the same status and
headers, ``Content-Length`` included, and no body. A GET or HEAD whose ``If-None-Match``
names the response's ``ETag`` (or is ``*``) gets 304 with the ``ETag`` and no body.
"""

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ConditionalGet", "none_match"]

# What a 304 repeats of the 200 it stands for (RFC 9110, section 15.4.5); the rest describe
# a body that is not sent.
_KEPT_BY_304 = (b"etag", b"cache-control", b"content-location", b"date", b"expires", b"vary")


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``: weak comparison, as the RFC asks here."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


class ConditionalGet:
    """ASGI middleware: HEAD as GET without the body; 304 for a matching ``If-None-Match``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if scope["type"] != "http" or method not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        head = method == "HEAD"
        if_none_match = Headers(scope=scope).get("if-none-match")
        if not head and if_none_match is None:
            await self.app(scope, receive, send)
            return
        bodiless = False

        async def conditional_send(message: Message) -> None:
            nonlocal bodiless
            if message["type"] == "http.response.start":
                scope["method"] = method  # what the outer layers (access log, metrics) saw
                etag = Headers(raw=message["headers"]).get("etag")
                if (
                    message["status"] == 200
                    and etag
                    and if_none_match is not None
                    and none_match(if_none_match, etag)
                ):
                    kept = [(k, v) for k, v in message["headers"] if k.lower() in _KEPT_BY_304]
                    message = {**message, "status": 304, "headers": kept}
                    bodiless = True
                bodiless = bodiless or head
                await send(message)
            elif message["type"] == "http.response.body" and bodiless:
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send(message)

        # Routed as a GET (the scope is shared with the outer layers: put HEAD back after).
        scope["method"] = "GET"
        try:
            await self.app(scope, receive, conditional_send)
        finally:
            scope["method"] = method
