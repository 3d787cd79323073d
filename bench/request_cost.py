"""The app's own cost per request, in-process: ``python -m bench.request_cost [--traced]``.

The ASGI app is called directly, no socket, no HTTP parser, no client: what is left is what
the app adds (middleware, routing, validation, a unit of work on SQLite, serialization).
``GET /users/{id}`` on a SQLite file, ``--requests`` per round; CPU time of the process
(other processes on the machine add less noise to it than to wall time), the best of
``--rounds``; with ``--traced``, traces on, every span kept
(always-on sampling) and handed to an exporter that drops it, through the SDK's
BatchSpanProcessor. docs/tracing.md reports the figures.
"""

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any


async def _call(app: Any, method: str, path: str, body: bytes = b"") -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _measure(requests: int, rounds: int) -> list[float]:
    from app.main import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        created = await _call(app, "POST", "/users/", b'{"email":"b@example.com","password":"pw"}')
        assert created == 200, created
        for _ in range(200):  # warm up
            await _call(app, "GET", "/users/1")
        per_request = []
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(requests):
                await _call(app, "GET", "/users/1")
            per_request.append((time.process_time() - started) / requests)
        return per_request


def _trace_everything() -> None:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from app.observability import tracing

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracing.use_provider(provider)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--traced", action="store_true", help="traces on, every span kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        os.environ["DATABASE_URL"] = f"sqlite:///{directory}/bench.db"
        if args.traced:
            _trace_everything()
        per_request = asyncio.run(_measure(args.requests, args.rounds))
    best, median = min(per_request), sorted(per_request)[len(per_request) // 2]
    print(
        f"{'traced' if args.traced else 'untraced'}: best {best * 1e6:.1f} us/request, "
        f"median {median * 1e6:.1f} us over {args.rounds} rounds of {args.requests}"
    )


if __name__ == "__main__":
    main()
