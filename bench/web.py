"""Sections 3 and 5: real uvicorn servers under wrk: this app, the tutorial and the floors."""

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.testing.server import LiveServer
from bench.data import Dataset, postgres_database, seed, sqlite_url
from bench.report import Table, Target
from bench.server import cpu_seconds, peak_rss_kib

__all__ = [
    "APPS",
    "REQUESTS",
    "SMALL",
    "WRITE_BODY",
    "WRK_MISSING",
    "Load",
    "Request",
    "latency",
    "measure",
    "postgres_table",
    "progress",
    "rate",
    "ratio",
    "serve",
    "serve_app",
    "settle",
    "sqlite_tables",
    "times",
    "wrk_run",
    "wrk_timeout",
]

APPS = {
    "app": "app.main:app",
    "tutorial": "bench.baseline_app:app",
    "framework floor": "bench.framework_app:app",
    "floor": "bench.floor_app:app",
}
POSTGRES_APPS = ("app", "tutorial")
"""The floors are SQLite only."""
TELEMETRY = {"LOG_FORMAT": "json", "METRICS_ENABLED": "true"}
"""In sections 3 and 5 the app runs as ``app serve`` with these: the JSON access log and the
metrics on, as in production."""
SMALL = Dataset(users=100, items_per_user=10)
WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
WRK_MISSING = (
    "wrk is not installed, so the HTTP benchmarks (sections 3, 5, 6 and 8) did not run. Install "
    "it with `sudo apt-get install wrk` (Debian/Ubuntu; .ci/run does this) or `brew install "
    "wrk` (macOS), then run `make bench` again."
)
Order = Literal["cycle", "random"]
_SETTLE_STEP = 0.05


@dataclass(frozen=True)
class Request:
    label: str
    method: str
    path: str
    body: str = ""
    keyed: bool = False
    """Every request carries a fresh Idempotency-Key."""

    @property
    def writes(self) -> bool:
        return self.method != "GET"


WRITE_BODY = '{"title": "bench item", "description": "written by wrk"}'
REQUESTS = (
    Request("GET /users/{id}", "GET", "/users/%d"),
    Request("GET /items/?limit=100", "GET", "/items/?limit=100"),
    Request("POST /users/{id}/items/", "POST", "/users/%d/items/", WRITE_BODY),
)


@dataclass(frozen=True)
class Goal:
    """The app's req/s at least ``at_least`` times ``against``'s (and no errors)."""

    against: str
    at_least: float
    zero_errors: bool = False

    def describe(self) -> str:
        errors = ", 0 errors" if self.zero_errors else ""
        share = f"{self.at_least:.2f}" if self.at_least < 1 else f"{self.at_least:g}"
        return f">= {share}x {self.against}{errors}"


# From the issues, with 1 worker and 32 connections; with more workers, the earlier targets.
ONE_WORKER_GOALS = {
    "GET /users/{id}": (Goal("framework floor", 0.5), Goal("tutorial", 2.0)),
    "GET /items/?limit=100": (Goal("framework floor", 0.4),),
    "POST /users/{id}/items/": (Goal("framework floor", 0.6), Goal("tutorial", 2.0)),
}
POSTGRES_GOAL = Goal("tutorial", 2.0)
MEMORY_TARGET = 1.10
"""The app's peak worker RSS at most this many times the tutorial's (1 worker)."""


def _goals(request: Request, workers: int) -> tuple[Goal, ...]:
    if workers == 1:
        return ONE_WORKER_GOALS[request.label]
    return (Goal("tutorial", 1.0, zero_errors=request.writes),)


@dataclass(frozen=True)
class Load:
    """What wrk saw in one run, the CPU the server's workers spent on it, and their peak RSS."""

    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_seconds: float = 0.0
    peak_rss_kib: int = 0

    @classmethod
    def of(cls, data: dict[str, Any]) -> "Load":
        """What ``wrk_run`` returned, as a Load."""
        return cls(
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            non2xx=data["non2xx"],
            socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
        )

    @property
    def cpu_per_request(self) -> str:
        if not self.requests:
            return "-"
        return f"{self.cpu_seconds * 1000 / self.requests:.2f}"

    @property
    def ok_per_second(self) -> float:
        return (self.requests - self.non2xx) / self.seconds

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @classmethod
    def total(cls, rounds: list["Load"]) -> "Load":
        """Several rounds as one run: counts and times add up; p50 is the median round's,
        p99 the worst round's."""
        return cls(
            requests=sum(r.requests for r in rounds),
            seconds=sum(r.seconds for r in rounds),
            non2xx=sum(r.non2xx for r in rounds),
            socket_errors=sum(r.socket_errors for r in rounds),
            p50_ms=statistics.median(r.p50_ms for r in rounds),
            p99_ms=max(r.p99_ms for r in rounds),
            cpu_seconds=sum(r.cpu_seconds for r in rounds),
            peak_rss_kib=max(r.peak_rss_kib for r in rounds),
        )


def wrk_timeout(seconds: int) -> int:
    """wrk's per-request timeout for a run of ``seconds``: an answer later than the run's
    length could not have been counted anyway; 5 s at most, so a stuck server shows."""
    return max(1, min(5, seconds))


def wrk_run(
    url: str,
    request: Request,
    *,
    seconds: int,
    connections: int,
    timeout: float | None = None,
    ids: int = SMALL.users,
    order: Order = "cycle",
) -> dict[str, Any]:
    """One wrk run of ``request`` with bench/wrk.lua: what its BENCH_RESULT line reports
    (``Load.of`` reads it). ``timeout``: wrk's per request, ``wrk_timeout(seconds)`` unless
    given."""
    env = {
        **os.environ,
        "BENCH_METHOD": request.method,
        "BENCH_PATH": request.path,
        "BENCH_IDS": str(ids),
        "BENCH_ORDER": order,
        "BENCH_BODY": request.body,
        "BENCH_IDEMPOTENCY_KEY": "1" if request.keyed else "",
    }
    command = [
        "wrk",
        "--threads",
        "2",
        "--connections",
        str(connections),
        "--duration",
        f"{seconds}s",
        "--timeout",
        f"{wrk_timeout(seconds) if timeout is None else timeout:g}s",
        "--script",
        str(WRK_SCRIPT),
        url,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=True
    )
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            data: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            return data
    raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def serve(name: str, database_url: str, *, workers: int, log_path: Path) -> LiveServer:
    """``APPS[name]`` on a seeded database, with the same uvicorn options for every server."""
    return serve_app(APPS[name], database_url, workers=workers, log_path=log_path)


def _serve_compared(name: str, database_url: str, *, workers: int, log_path: Path) -> LiveServer:
    """As ``serve``, but the app runs as ``app serve`` with its telemetry on (``TELEMETRY``):
    sections 3 and 5 compare the app as it runs in production."""
    if name != "app":
        return serve(name, database_url, workers=workers, log_path=log_path)
    env = {"DATABASE_URL": database_url, "MIGRATE_ON_STARTUP": "false", **TELEMETRY}
    return LiveServer(env, workers, serve=True, ready_path="/users/1", log_path=log_path)


def serve_app(app: str, database_url: str, *, workers: int, log_path: Path) -> LiveServer:
    """``uvicorn APP --workers N --no-access-log`` on a seeded database."""
    # The schema is seeded: the app must not run migrations over it, whatever .env says.
    env = {"DATABASE_URL": database_url, "MIGRATE_ON_STARTUP": "false"}
    return LiveServer(
        env,
        workers,
        app=app,
        ready_path="/users/1",
        log_path=log_path,
        extra_args=("--no-access-log",),
    )


def settle(pids: list[int], *, timeout: float = 2.0) -> None:
    """Wait (``timeout`` at most) until the processes are idle: a server still answering the
    requests wrk left behind would take CPU from whichever is loaded next."""
    deadline = time.monotonic() + timeout
    used = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(_SETTLE_STEP)
        now = cpu_seconds(pids)
        if now - used < _SETTLE_STEP / 10:
            return
        used = now


def measure(
    servers: dict[str, LiveServer],
    requests: tuple[Request, ...],
    *,
    round_seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
    ids: int = SMALL.users,
    order: Order = "cycle",
) -> dict[str, dict[str, Load]]:
    """Every server under each request in turn, in rounds; loads by server, then request.

    Interleaving pairs the measurements in time, so a slow spell of the machine (this is
    usually a shared VM) hits every server instead of whichever happened to run then; the
    rounds alternate the order, so none always runs right after another's load.
    """
    pids = {name: server.worker_pids() for name, server in servers.items()}
    loads: dict[str, dict[str, Load]] = {name: {} for name in servers}
    for request in requests:
        progress(f"{request.label}: {', '.join(servers)}, {rounds} round(s) each")
        if warmup:
            for name, server in servers.items():
                wrk_run(
                    server.url,
                    request,
                    seconds=warmup,
                    connections=connections,
                    ids=ids,
                    order=order,
                )
                settle(pids[name])
        done: dict[str, list[Load]] = {name: [] for name in servers}
        for round_ in range(rounds):
            for name in list(servers)[:: 1 if round_ % 2 == 0 else -1]:
                before = cpu_seconds(pids[name])
                load = Load.of(
                    wrk_run(
                        servers[name].url,
                        request,
                        seconds=round_seconds,
                        connections=connections,
                        ids=ids,
                        order=order,
                    )
                )
                cpu = cpu_seconds(pids[name]) - before
                rss = max(peak_rss_kib(pid) for pid in pids[name])
                done[name].append(dataclasses.replace(load, cpu_seconds=cpu, peak_rss_kib=rss))
                settle(pids[name])
        for name, measured in done.items():
            loads[name][request.label] = Load.total(measured)
    return loads


def ratio(a: Load, b: Load) -> float:
    return a.ok_per_second / b.ok_per_second if b.ok_per_second else math.inf


def times(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.3f}x" if value < 0.995 else f"{value:.2f}x"


def rate(load: Load) -> str:
    return f"{load.ok_per_second:,.0f}"


def latency(load: Load) -> str:
    return f"{load.p50_ms:.1f} / {load.p99_ms:.1f}"


def _each(loads: list[Load], cell: str) -> str:
    cells = {
        "cpu": [load.cpu_per_request for load in loads],
        "errors": [f"{load.non2xx}+{load.socket_errors}" for load in loads],
        "rss": [f"{load.peak_rss_kib / 1024:.0f}" for load in loads],
    }[cell]
    return " / ".join(cells)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def _met(goals: tuple[Goal, ...], ratios: dict[str, float], errors: int) -> list[bool]:
    return [ratios[g.against] >= g.at_least and not (g.zero_errors and errors) for g in goals]


def _verdict(goals: tuple[Goal, ...], met: list[bool]) -> str:
    if all(met):
        return "yes"
    if len(goals) == 1:
        return "NO"
    return "NO (" + ", ".join(g.against for g, ok in zip(goals, met, strict=True) if not ok) + ")"


def _notes(servers: str, round_seconds: int, data: Dataset) -> str:
    return (
        f"{servers} run side by side; each request loads them in turn, in rounds that "
        "alternate their order, so a slow spell of the machine hits all of them; after each "
        "run the next waits (2 s at most) until the server is idle again. "
        "req/s counts 2xx answers only; p50 is the median round's, p99 the worst round's; "
        "errors are non-2xx answers + socket errors (connect, read, write, no answer within "
        f"{wrk_timeout(round_seconds)} s); CPU ms/req is the user + system time of the worker "
        "processes during the run per request, which other load on the machine disturbs "
        "less than req/s; peak RSS is the largest VmHWM of a worker after the request's "
        f"rounds. Each server starts on a freshly seeded database ({data.describe()}) with "
        "the same uvicorn options (--workers N --no-access-log)."
    )


@contextmanager
def _sqlite_servers(folder: Path, workers: int) -> Iterator[dict[str, LiveServer]]:
    with ExitStack() as stack:
        servers = {}
        for name in APPS:
            url = sqlite_url(folder / f"{name.replace(' ', '-')}-{workers}.db")
            seed(url, SMALL)
            log_path = folder / f"{name.replace(' ', '-')}-{workers}.log"
            servers[name] = stack.enter_context(
                _serve_compared(name, url, workers=workers, log_path=log_path)
            )
        yield servers


def sqlite_tables(
    folder: Path,
    *,
    workers: tuple[int, ...],
    seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
) -> list[Table]:
    """Section 3 (app, tutorial and both floors on SQLite) and the memory table."""
    round_seconds = max(1, seconds // rounds)
    http = Table(
        f"3. HTTP under wrk on SQLite ({connections} connections, {round_seconds * rounds} s "
        f"per server and request in {rounds} alternating round(s), 127.0.0.1)",
        (
            "request",
            "workers",
            "app req/s",
            "tutorial req/s",
            "framework floor req/s",
            "floor req/s",
            "app / tutorial",
            "app / framework floor",
            "app / floor",
            "app p50 / p99 ms",
            "tutorial p50 / p99 ms",
            "framework floor p50 / p99 ms",
            "floor p50 / p99 ms",
            "CPU ms/req app / tutorial / framework floor / floor",
            "errors app / tutorial / framework floor / floor",
            "peak RSS MiB app / tutorial / framework floor / floor",
            "target",
            "met",
        ),
        notes=[
            _notes("The four servers", round_seconds, SMALL),
            "The app runs as `app serve` with its telemetry on (LOG_FORMAT=json: one JSON "
            "access line per request; METRICS_ENABLED=true), as in production; the others "
            "under plain uvicorn. The tutorial is bench/baseline_app.py (FastAPI's SQL tutorial "
            "written the plain way); the framework floor is bench/framework_app.py (the app's "
            "own SQL statements, in its transaction modes, behind FastAPI's routing and typed "
            "parameters, with stdlib sqlite3 on the event loop and JSON built from the rows: "
            "no pydantic models, no SQLAlchemy, no middleware); the floor is "
            "bench/floor_app.py (bare Starlette, stdlib sqlite3, one SQL statement per "
            "request on the event loop, SQLite builds the JSON).",
        ],
    )
    memory = Table(
        "Memory: peak RSS (VmHWM) of a worker after the write benchmark, SQLite",
        ("workers", *APPS, "app / tutorial", "target", "met"),
    )
    for w in workers:
        progress(f"SQLite, {w} worker(s)")
        with _sqlite_servers(folder, w) as servers:
            runs = measure(
                servers,
                REQUESTS,
                round_seconds=round_seconds,
                rounds=rounds,
                warmup=warmup,
                connections=connections,
            )
        for request in REQUESTS:
            loads = [runs[name][request.label] for name in APPS]
            app = loads[0]
            ratios = {name: ratio(app, runs[name][request.label]) for name in APPS}
            goals = _goals(request, w)
            met = _met(goals, ratios, app.errors)
            http.add(
                request.label,
                str(w),
                *(rate(load) for load in loads),
                times(ratios["tutorial"]),
                times(ratios["framework floor"]),
                times(ratios["floor"]),
                *(latency(load) for load in loads),
                _each(loads, "cpu"),
                _each(loads, "errors"),
                _each(loads, "rss"),
                ", ".join(g.describe() for g in goals),
                _verdict(goals, met),
            )
            for goal, ok in zip(goals, met, strict=True):
                http.targets.append(
                    Target(f"SQLite {request.label}, {w} worker(s)", f"req/s {goal.describe()}", ok)
                )
        peaks = {name: max(load.peak_rss_kib for load in runs[name].values()) for name in APPS}
        share = peaks["app"] / peaks["tutorial"]
        target, verdict = "", ""
        if w == 1:
            ok = share <= MEMORY_TARGET
            target, verdict = f"<= {MEMORY_TARGET:.2f}x", "yes" if ok else "NO"
            memory.targets.append(
                Target("Memory, 1 worker", f"peak RSS <= {MEMORY_TARGET:.2f}x tutorial", ok)
            )
        memory.add(str(w), *(_mib(peaks[name]) for name in APPS), times(share), target, verdict)
    return [http, memory]


def postgres_table(
    server_url: str,
    folder: Path,
    *,
    seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
) -> Table:
    """Section 5: the app against the tutorial on PostgreSQL, 1 worker, a database each."""
    round_seconds = max(1, seconds // rounds)
    table = Table(
        f"5. HTTP under wrk on PostgreSQL ({connections} connections, 1 worker, "
        f"{round_seconds * rounds} s per server and request in {rounds} alternating round(s))",
        (
            "request",
            "app req/s",
            "tutorial req/s",
            "app / tutorial",
            "app p50 / p99 ms",
            "tutorial p50 / p99 ms",
            "CPU ms/req app / tutorial",
            "errors app / tutorial",
            "peak RSS MiB app / tutorial",
            "target",
            "met",
        ),
        notes=[
            _notes("Both servers", round_seconds, SMALL),
            "Each server has a database of its own on one throwaway PostgreSQL server on "
            "127.0.0.1 (scripts/with_postgres.py: fsync and synchronous_commit off), seeded "
            "with COPY before it starts; CPU ms/req counts the uvicorn worker only, not the "
            "PostgreSQL backends. The app runs as `app serve` with its telemetry on, as in "
            "section 3.",
        ],
    )
    with ExitStack() as stack:
        servers = {}
        for name in POSTGRES_APPS:
            url = stack.enter_context(postgres_database(server_url, f"bench_{name}"))
            seed(url, SMALL)
            log_path = folder / f"{name}-postgres.log"
            servers[name] = stack.enter_context(
                _serve_compared(name, url, workers=1, log_path=log_path)
            )
        progress("PostgreSQL, 1 worker")
        runs = measure(
            servers,
            REQUESTS,
            round_seconds=round_seconds,
            rounds=rounds,
            warmup=warmup,
            connections=connections,
        )
    for request in REQUESTS:
        loads = [runs[name][request.label] for name in POSTGRES_APPS]
        app, tutorial = loads
        share = ratio(app, tutorial)
        (ok,) = _met((POSTGRES_GOAL,), {"tutorial": share}, app.errors)
        table.add(
            request.label,
            rate(app),
            rate(tutorial),
            times(share),
            latency(app),
            latency(tutorial),
            _each(loads, "cpu"),
            _each(loads, "errors"),
            _each(loads, "rss"),
            POSTGRES_GOAL.describe(),
            "yes" if ok else "NO",
        )
        table.targets.append(
            Target(f"PostgreSQL {request.label}, 1 worker", f"req/s {POSTGRES_GOAL.describe()}", ok)
        )
    return table
