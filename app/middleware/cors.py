"""CORS: which browser origins may call the API (CORS_ORIGINS), through Starlette's middleware."""

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "EXPOSED_HEADERS", "add_cors"]

ALLOWED_METHODS = ("GET", "POST", "PATCH", "DELETE")
"""The methods the API serves."""
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "If-Match", "X-Wal-Position")
"""The request headers it reads (besides the ones browsers always allow)."""
EXPOSED_HEADERS = ("ETag", "Idempotent-Replayed", "Retry-After", "X-Request-ID", "X-Wal-Position")
"""The response headers a page's script may read: the version for If-Match, whether the answer
is a stored one (Idempotency-Key), when to retry,
the id that the access log shows, and the WAL position for read-your-writes with replicas
(cross-origin requests carry no cookies, so such pages send it back in the header)."""


def add_cors(app: FastAPI, origins: Sequence[str]) -> None:
    """Answer preflights and add CORS headers for ``origins``; with none, no CORS at all, so
    browsers keep every other origin's pages out (the same-origin policy)."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=ALLOWED_METHODS,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        # Bearer tokens travel in a header, not in cookies: no credentialed requests.
        allow_credentials=False,
        max_age=600,
    )
