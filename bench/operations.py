"""Section 7: what the JSON access log and the metrics (and traces) cost on GET /users/{id}."""

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from app.testing.otlp import OtlpReceiver
from app.testing.server import LiveServer
from bench.data import seed, sqlite_url
from bench.report import Table, Target
from bench.web import REQUESTS, SMALL, Load, latency, measure, progress, rate, ratio, times

__all__ = ["KEPT_TARGET", "overhead_table"]

KEPT_TARGET = 0.90
"""Share of its throughput that ``app serve`` keeps with the access log and metrics on."""
_REQUEST = REQUESTS[0]  # GET /users/{id}
_CONFIGURATIONS = {
    "off": "access log and metrics off",
    "on": "JSON access log + metrics",
    "traced": "the same + traces (default sampler)",
}


def _server(folder: Path, name: str, env: dict[str, str]) -> LiveServer:
    url = sqlite_url(folder / f"operations-{name}.db")
    seed(url, SMALL)
    return LiveServer(
        {"DATABASE_URL": url, "MIGRATE_ON_STARTUP": "false", "LOG_FORMAT": "json", **env},
        serve=True,
        ready_path="/users/1",
        log_path=folder / f"operations-{name}.log",
    )


def _cpu_ratio(load: Load, baseline: Load) -> float:
    """Throughput kept, judged by the worker's CPU per request (baseline's / this one's)."""
    if not (load.requests and baseline.requests and load.cpu_seconds):
        return 0.0
    return (baseline.cpu_seconds / baseline.requests) / (load.cpu_seconds / load.requests)


def overhead_table(
    folder: Path, *, seconds: int, rounds: int, warmup: int, connections: int
) -> Table:
    """``app serve`` three ways, 1 worker, SQLite, in alternating rounds: access log and
    metrics off (the baseline), both on, both on plus traces exported to a loopback OTLP
    receiver. Every other option is the same, so the ratios measure telemetry alone."""
    round_seconds = max(1, seconds // rounds)
    table = Table(
        f"7. Telemetry overhead on SQLite ({connections} connections, 1 worker, "
        f"{round_seconds * rounds} s per server in {rounds} alternating round(s))",
        (
            "GET /users/{id}",
            "req/s",
            "vs off",
            "CPU ms/req",
            "vs off by CPU",
            "p50 / p99 ms",
            "middleware µs/req in-process",
            "errors",
            "target",
            "met",
        ),
        notes=[
            "All three are `app serve` (1 worker, LOG_FORMAT=json, stderr to a file) on a "
            "database of their own. Off: ACCESS_LOG=false, METRICS_ENABLED=false (request "
            "ids are still made and echoed). On: one JSON access line per request and "
            "METRICS_ENABLED=true (prometheus-client's multiprocess mode, as app serve always "
            "runs it). Traced: the same plus OTEL_TRACES_EXPORTER=otlp to an "
            "app.testing.otlp.OtlpReceiver on 127.0.0.1 at the default sampler "
            "(parentbased_always_on: every request is a trace). Off and on run in alternating "
            "rounds, then off and traced (the spans a traced round leaves to export would "
            "land in the next server's round); the off row is the first pass. vs off is req/s "
            "against off's in the same rounds; vs off by CPU is off's CPU time per request "
            "over this one's "
            "(the worker process, from /proc), which other load on the machine disturbs "
            "less. Middleware µs/req is what the telemetry middleware adds, in that "
            "configuration, to an ASGI app that answers at once, timed in-process "
            "(bench/middleware.py, best of 5 rounds; traces not included).",
        ],
    )
    with ExitStack() as stack:
        receiver = stack.enter_context(OtlpReceiver())
        telemetry = {"ACCESS_LOG": "true", "METRICS_ENABLED": "true"}
        envs = {
            "off": {"ACCESS_LOG": "false", "METRICS_ENABLED": "false"},
            "on": telemetry,
            "traced": {
                **telemetry,
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_SERVICE_NAME": "bench",
            },
        }
        servers = {
            name: stack.enter_context(_server(folder, name, env)) for name, env in envs.items()
        }
        # Off against on, then off against traced: the spans a traced round leaves to export
        # (and the receiver, in this process, to parse) must not land in on's rounds.
        baselines: dict[str, Load] = {}
        loads: dict[str, Load] = {}
        for compared in ("on", "traced"):
            progress(f"telemetry overhead, 1 worker: off and {compared}")
            runs = measure(
                {name: servers[name] for name in ("off", compared)},
                (_REQUEST,),
                round_seconds=round_seconds,
                rounds=rounds,
                warmup=warmup,
                connections=connections,
            )
            baselines[compared] = runs["off"][_REQUEST.label]
            loads[compared] = runs[compared][_REQUEST.label]
    loads = {"off": baselines["on"], **loads}
    middleware = _middleware_us()
    for name, load in loads.items():
        off = baselines.get(name, load)
        kept = ratio(load, off)
        measured = name == "on"
        met = kept >= KEPT_TARGET and not load.errors
        table.add(
            _CONFIGURATIONS[name],
            rate(load),
            "1" if name == "off" else times(kept),
            load.cpu_per_request,
            "1" if name == "off" else times(_cpu_ratio(load, off)),
            latency(load),
            f"{middleware[name]:.1f}" if name in middleware else "-",
            f"{load.non2xx}+{load.socket_errors}",
            f">= {KEPT_TARGET:.2f}x off" if measured else "reported",
            ("yes" if met else "NO") if measured else "-",
        )
        if measured:
            table.targets.append(
                Target(
                    "Telemetry on (JSON access log + metrics), GET /users/{id}, 1 worker",
                    f">= {KEPT_TARGET:.2f}x the throughput with both off",
                    met,
                )
            )
    return table


def _middleware_us() -> dict[str, float]:
    """bench/middleware.py's figures: µs per request that the middleware adds, off and on."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.middleware"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    timed = json.loads(result.stdout)
    return {name: float(timed[f"{name}_us"] - timed["bare_us"]) for name in ("off", "on")}
