"""Section 3: real uvicorn servers under wrk, this app versus the tutorial baseline."""

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, insert

from app.database import Base
from app.models import Item, User
from app.testing.server import LiveServer
from bench.report import Table, Target
from bench.server import cpu_seconds, peak_rss_kib

__all__ = ["APPS", "REQUESTS", "WRK_MISSING", "web_tables"]

APPS = {"app": "app.main:app", "baseline": "bench.baseline_app:app"}
USERS = 100
ITEMS_PER_USER = 10
WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
WRK_MISSING = (
    "wrk is not installed, so the HTTP benchmarks (section 3) did not run. Install it with "
    "`sudo apt-get install wrk` (Debian/Ubuntu; .ci/run does this) or `brew install wrk` "
    "(macOS), then run `make bench` again."
)


@dataclass(frozen=True)
class Request:
    label: str
    method: str
    path: str
    body: str = ""

    @property
    def writes(self) -> bool:
        return self.method != "GET"


REQUESTS = (
    Request("GET /users/{id}", "GET", "/users/%d"),
    Request("GET /items/?limit=100", "GET", "/items/?limit=100"),
    Request(
        "POST /users/{id}/items/",
        "POST",
        "/users/%d/items/",
        '{"title": "bench item", "description": "written by wrk"}',
    ),
)


@dataclass(frozen=True)
class Load:
    """What wrk saw in one run."""

    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_seconds: float = 0.0

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
        )


@dataclass(frozen=True)
class Run:
    """One server's loads, by request label, and its workers' peak RSS afterwards."""

    loads: dict[str, Load]
    peak_rss_kib: list[int]


def seed(path: Path) -> None:
    """A fresh database the way the tutorial makes one: plain create_all, default journal."""
    for stale in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        stale.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(
                insert(User),
                [
                    {"email": f"user{i}@example.com", "hashed_password": "-"}
                    for i in range(1, USERS + 1)
                ],
            )
            connection.execute(
                insert(Item),
                [
                    {"title": f"item {u}.{i}", "description": "seeded", "owner_id": u}
                    for u in range(1, USERS + 1)
                    for i in range(ITEMS_PER_USER)
                ],
            )
    finally:
        engine.dispose()


def wrk_timeout(seconds: int) -> int:
    """wrk's per-request timeout for a run of ``seconds``: an answer later than the run's
    length could not have been counted anyway; 5 s at most, so a stuck server shows."""
    return max(1, min(5, seconds))


def wrk(url: str, request: Request, *, seconds: int, connections: int) -> Load:
    env = {
        **os.environ,
        "BENCH_METHOD": request.method,
        "BENCH_PATH": request.path,
        "BENCH_IDS": str(USERS),
        "BENCH_BODY": request.body,
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
        f"{wrk_timeout(seconds)}s",
        "--script",
        str(WRK_SCRIPT),
        url,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=True
    )
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line.removeprefix("BENCH_RESULT "))
            return Load(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                non2xx=data["non2xx"],
                socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _server(name: str, workers: int, folder: Path) -> LiveServer:
    """``name`` on a freshly seeded database of its own."""
    database = folder / f"{name}-{workers}.db"
    seed(database)
    # The schema is seeded: the app must not run migrations over it, whatever .env says.
    env = {"DATABASE_URL": f"sqlite:///{database}", "MIGRATE_ON_STARTUP": "false"}
    return LiveServer(
        env,
        workers,
        app=APPS[name],
        ready_path="/users/1",
        log_path=folder / f"{name}-{workers}.log",
        extra_args=("--no-access-log",),
    )


def load_side_by_side(
    workers: int,
    folder: Path,
    *,
    round_seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
) -> dict[str, Run]:
    """Both servers up at once; each request loads them in alternating rounds.

    Interleaving pairs the measurements in time, so a slow spell of the machine (this is
    usually a shared VM) hits both servers instead of whichever happened to run then.
    """
    loads: dict[str, dict[str, Load]] = {name: {} for name in APPS}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(_server(name, workers, folder)) for name in APPS}
        pids = {name: server.worker_pids() for name, server in servers.items()}
        for request in REQUESTS:
            _progress(f"{request.label}, {workers} worker(s), {rounds} round(s) each")
            if warmup:
                for server in servers.values():
                    wrk(server.url, request, seconds=warmup, connections=connections)
            done: dict[str, list[Load]] = {name: [] for name in APPS}
            for round_ in range(rounds):
                for name in list(APPS)[:: 1 if round_ % 2 == 0 else -1]:
                    before = cpu_seconds(pids[name])
                    load = wrk(
                        servers[name].url,
                        request,
                        seconds=round_seconds,
                        connections=connections,
                    )
                    cpu = cpu_seconds(pids[name]) - before
                    done[name].append(dataclasses.replace(load, cpu_seconds=cpu))
            for name, measured in done.items():
                loads[name][request.label] = Load.total(measured)
        return {
            name: Run(loads[name], [peak_rss_kib(pid) for pid in pids[name]]) for name in servers
        }


def _latency(load: Load) -> str:
    return f"{load.p50_ms:.1f} / {load.p99_ms:.1f}"


def _errors(load: Load) -> str:
    return f"{load.non2xx} / {load.socket_errors}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def web_tables(
    folder: Path,
    *,
    workers: tuple[int, ...],
    seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
) -> list[Table]:
    round_seconds = max(1, seconds // rounds)
    http = Table(
        f"3. HTTP under wrk ({connections} connections, {round_seconds * rounds} s per server "
        f"and request in {rounds} alternating round(s), 127.0.0.1)",
        (
            "request",
            "workers",
            "app req/s",
            "baseline req/s",
            "ratio",
            "app p50 / p99 ms",
            "baseline p50 / p99 ms",
            "app errors",
            "baseline errors",
            "CPU ms/req app / baseline",
            "target",
            "met",
        ),
        notes=[
            "Both servers run side by side; each request loads them in turn, in rounds that "
            "alternate which goes first, so a slow spell of the machine hits both. "
            "req/s counts 2xx answers only; p50 is the median round's, p99 the worst round's; "
            "errors are non-2xx answers / socket errors (connect, read, write, no answer "
            f"within {wrk_timeout(round_seconds)} s); CPU ms/req "
            "is the user + system time of the worker processes during the run per request, "
            "which other load on the machine disturbs less than req/s. Each server starts on "
            f"a freshly seeded database ({USERS} users, {USERS * ITEMS_PER_USER} items) with "
            "the same uvicorn options (--workers N --no-access-log); the baseline is "
            "bench/baseline_app.py."
        ],
    )
    memory = Table(
        "Memory: peak RSS (VmHWM) of a worker after the write benchmark",
        ("workers", "app", "baseline", "ratio"),
    )
    for w in workers:
        runs = load_side_by_side(
            w,
            folder,
            round_seconds=round_seconds,
            rounds=rounds,
            warmup=warmup,
            connections=connections,
        )
        app, base = runs["app"], runs["baseline"]
        for request in REQUESTS:
            a, b = app.loads[request.label], base.loads[request.label]
            ratio = a.ok_per_second / b.ok_per_second if b.ok_per_second else math.inf
            target, wanted, met = "", "", None
            if not request.writes:
                target, wanted, met = ">= 1.0x", "req/s >= 1.0x baseline", ratio >= 1.0
            elif w >= 2:
                target, wanted = ">= 1.0x, 0 errors", "req/s >= 1.0x baseline, zero errors"
                met = ratio >= 1.0 and a.errors == 0
            http.add(
                request.label,
                str(w),
                f"{a.ok_per_second:,.0f}",
                f"{b.ok_per_second:,.0f}",
                f"{ratio:.2f}x" if b.ok_per_second else "∞ (baseline served none)",
                _latency(a),
                _latency(b),
                _errors(a),
                _errors(b),
                f"{a.cpu_per_request} / {b.cpu_per_request}",
                target,
                "" if met is None else ("yes" if met else "NO"),
            )
            if met is not None:
                http.targets.append(Target(f"HTTP {request.label}, {w} worker(s)", wanted, met))
        a_rss, b_rss = max(app.peak_rss_kib), max(base.peak_rss_kib)
        memory.add(str(w), _mib(a_rss), _mib(b_rss), f"{a_rss / b_rss:.2f}x")
    return [http, memory]
