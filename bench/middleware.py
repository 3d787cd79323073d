"""The telemetry middleware's own cost, in-process: ``python -m bench.middleware`` prints, as
JSON, the µs per request it adds to an ASGI app that answers at once, as ``app serve`` runs
it (a new request id, a JSON access line written to a file, metrics in multiprocess mode).

A separate process, because prometheus-client picks its multiprocess mode when it is first
imported. Unlike req/s, this does not move with other load on the machine.
"""

import asyncio
import json
import logging.config
import os
import sys
import tempfile
import time
from typing import Any

ROUNDS = 5
REQUESTS = 20_000


class _Route:
    path = "/users/{user_id}"


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = _Route
    headers = [(b"content-type", b"application/json"), (b"content-length", b"60")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"x" * 60})


async def _best_us(app: Any, state: Any) -> float:
    """The fastest of ``ROUNDS`` rounds of ``REQUESTS`` calls, in µs per call."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "method": "GET",
            "path": "/users/1",
            "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"wrk")],
            "client": ("127.0.0.1", 50000),
            "app": state,
        }

    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(REQUESTS):
            await app(scope(), receive, send)
        best = min(best, (time.perf_counter() - started) / REQUESTS)
    return best * 1e6


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-middleware-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from starlette.datastructures import State

        from app.middleware.telemetry import Telemetry
        from app.observability.logs import logging_config
        from app.runtime import Runtime

        config = logging_config(level="info", log_format="json", access_log=True)
        with open(os.path.join(directory, "access.log"), "w", encoding="utf-8") as log:
            config["handlers"]["stderr"]["stream"] = log
            logging.config.dictConfig(config)

            class App:
                state = State()

            bare = asyncio.run(_best_us(_inner, App()))
            measured = Runtime(metrics_enabled=True)
            telemetry = asyncio.run(_best_us(Telemetry(_inner, measured), App()))
    json.dump({"bare_us": bare, "telemetry_us": telemetry}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
