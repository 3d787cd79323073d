"""Section 7: what request ids, the JSON access log and the metrics cost on GET /users/{id}."""

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from app.testing.server import LiveServer
from bench.data import seed, sqlite_url
from bench.report import Table, Target
from bench.web import REQUESTS, SMALL, latency, measure, progress, rate, ratio, serve_app

__all__ = ["OVERHEAD_TARGET", "overhead_table"]

OVERHEAD_TARGET = 0.10
"""Throughput lost to the operations layer, at most."""
_REQUEST = REQUESTS[0]  # GET /users/{id}


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %"


def overhead_table(
    folder: Path, *, seconds: int, rounds: int, warmup: int, connections: int
) -> Table:
    """``app serve`` with everything on (JSON access log to a file, METRICS_ENABLED with its
    multiprocess directory) against the same app without the telemetry middleware, under
    plain uvicorn with no access log; 1 worker, SQLite, in alternating rounds."""
    round_seconds = max(1, seconds // rounds)
    table = Table(
        f"7. Operations overhead on SQLite ({connections} connections, 1 worker, "
        f"{round_seconds * rounds} s per server in {rounds} alternating round(s))",
        (
            "request",
            "with req/s",
            "without req/s",
            "throughput overhead",
            "CPU overhead",
            "with p50 / p99 ms",
            "without p50 / p99 ms",
            "CPU ms/req with / without",
            "middleware µs/req in-process",
            "errors with / without",
            "target",
            "met",
        ),
        notes=[
            "With: `app serve` with LOG_FORMAT=json (one access line per request, to a "
            "file), METRICS_ENABLED=true (prometheus-client's multiprocess mode, as app serve "
            "always runs it) and a request id generated for every request. Without: "
            "bench/plain_app.py, the same app without its telemetry middleware, under "
            "`uvicorn --no-access-log`. Throughput overhead is 1 - with/without in req/s; CPU "
            "overhead compares the worker's CPU time per request, which other load on the "
            "machine disturbs less. Middleware µs/req is what the telemetry middleware adds "
            "to an ASGI app that answers at once, timed in-process (bench/middleware.py, "
            "best of 5 rounds, same configuration): the figure that load on the machine "
            "does not move.",
        ],
    )
    with ExitStack() as stack:
        urls = {name: sqlite_url(folder / f"operations-{name}.db") for name in ("with", "without")}
        for url in urls.values():
            seed(url, SMALL)
        env = {
            "DATABASE_URL": urls["with"],
            "MIGRATE_ON_STARTUP": "false",
            "LOG_FORMAT": "json",
            "METRICS_ENABLED": "true",
        }
        servers = {
            "with": stack.enter_context(
                LiveServer(
                    env,
                    serve=True,
                    ready_path="/users/1",
                    log_path=folder / "operations-with.log",
                )
            ),
            "without": stack.enter_context(
                serve_app(
                    "bench.plain_app:app",
                    urls["without"],
                    workers=1,
                    log_path=folder / "operations-without.log",
                )
            ),
        }
        progress("operations overhead, 1 worker")
        runs = measure(
            servers,
            (_REQUEST,),
            round_seconds=round_seconds,
            rounds=rounds,
            warmup=warmup,
            connections=connections,
        )
    on, off = runs["with"][_REQUEST.label], runs["without"][_REQUEST.label]
    middleware = _middleware_us()
    overhead = 1 - ratio(on, off)
    cpu = (
        on.cpu_seconds / on.requests / (off.cpu_seconds / off.requests) - 1
        if on.requests and off.requests and off.cpu_seconds
        else 0.0
    )
    ok = overhead < OVERHEAD_TARGET and not on.errors
    table.add(
        _REQUEST.label,
        rate(on),
        rate(off),
        _percent(overhead),
        _percent(cpu),
        latency(on),
        latency(off),
        f"{on.cpu_per_request} / {off.cpu_per_request}",
        f"{middleware:.0f}",
        f"{on.non2xx}+{on.socket_errors} / {off.non2xx}+{off.socket_errors}",
        f"< {OVERHEAD_TARGET * 100:.0f} %",
        "yes" if ok else "NO",
    )
    table.targets.append(
        Target(
            "Operations overhead, GET /users/{id}, 1 worker",
            f"throughput overhead < {OVERHEAD_TARGET * 100:.0f} %",
            ok,
        )
    )
    return table


def _middleware_us() -> float:
    """bench/middleware.py's figure: µs per request that the middleware adds."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.middleware"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    timed = json.loads(result.stdout)
    return float(timed["telemetry_us"] - timed["bare_us"])
