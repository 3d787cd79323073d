"""The telemetry middleware's own cost, in-process: ``python -m bench.middleware`` prints, as
JSON, the µs per request of an ASGI app that answers at once, bare (``bare_us``) and behind
the middleware as ``app serve`` runs it: access log and metrics off (``off_us``: a new
request id only), and on (``on_us``: a JSON access line written to a file, metrics in
multiprocess mode).

A separate process, because prometheus-client picks its multiprocess mode when it is first
imported. Unlike req/s, this does not move with other load on the machine.
"""

import asyncio
import json
import logging.config
import math
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

        class App:
            state = State()

        timed: dict[str, float] = {}
        with open(os.path.join(directory, "access.log"), "w", encoding="utf-8") as log:
            for name, on in (("off", False), ("on", True)):
                config = logging_config(level="info", log_format="json", access_log=on)
                _to(config, log)
                logging.config.dictConfig(config)
                timed["bare_us"] = min(
                    timed.get("bare_us", math.inf), asyncio.run(_best_us(_inner, App()))
                )
                middleware = Telemetry(_inner, Runtime(metrics_enabled=on))
                timed[f"{name}_us"] = asyncio.run(_best_us(middleware, App()))
            logging.shutdown()
    json.dump(timed, sys.stdout)
    return 0


def _to(config: dict[str, Any], log: Any) -> None:
    """Every handler of ``config`` writes to ``log`` instead of stderr."""
    for handler in config["handlers"].values():
        if handler.get("stream") == "ext://sys.stderr":
            handler["stream"] = log


if __name__ == "__main__":
    sys.exit(main())
