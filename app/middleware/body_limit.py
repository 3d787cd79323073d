"""Request body limit: past MAX_BODY_BYTES a request gets 413 before the rest is read.

FastAPI's own ``max_body_size`` answers a declared ``Content-Length`` over the limit with a
plain-text 413 that no handler can change; this one answers every 413 with the app's JSON
``{"detail": ...}``.
"""

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit"]


class _TooLarge(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413.

    A declared ``Content-Length`` over the limit is refused before the app runs, before a
    byte of the body is read (a client that sent ``Expect: 100-continue`` never sends it).
    A body without one (chunked) is counted as the app reads it: the read that crosses the
    limit raises a 413 ``HTTPException``, which the app answers like any other, and nothing
    more is read. What the client still sends, the server discards as it arrives.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"Request body too large: at most {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            # The server delivers no more than it declared: nothing to count.
            if declared > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.detail)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _TooLarge:
            # Raised where no exception handler runs (a middleware reading the body).
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:  # ASGI servers send names in lower case
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server refuses such a request before the app sees it
                return None
    return None
