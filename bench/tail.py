"""Section 11: the tail of GET /users/{id} on one worker, at 32 and 128 connections.

``app serve --workers 1`` as shipped, the same with ``--loop uvloop`` (uvicorn's default loop,
what ``app serve`` ran before), and a plain baseline under the same server options, side by
side in alternating rounds, on SQLite and PostgreSQL: the latency distribution wrk saw
(p50 / p99 / p99.9 / max), req/s, errors, timeouts and the worker's CPU per request.
"""

import dataclasses
import statistics
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.testing.server import LiveServer
from bench.data import postgres_database, seed, sqlite_url
from bench.report import Table, Target
from bench.server import cpu_seconds
from bench.web import REQUESTS, SMALL, progress, settle, wrk_run

__all__ = ["CONNECTIONS", "P99_AT_MOST_S", "SPREAD_AT_MOST", "Tail", "tail_table"]

CONNECTIONS = (32, 128)
P99_AT_MOST_S = 1.0
"""At 128 connections: the app's p99 under 1 s."""
SPREAD_AT_MOST = 4.0
"""At 32 connections: the app's p99 within 4x its p50."""
QUEUE_TIMEOUT_S = Settings.model_fields["DB_QUEUE_TIMEOUT"].default
"""wrk's timeout: no answer, 200 or 503, may take longer than the gate's bound."""
_REQUEST = REQUESTS[0]  # GET /users/{id}
_APP = "app serve"
_UVLOOP = "app serve --loop uvloop"
_BASELINES = {
    "SQLite": ("floor", "bench.floor_app:app"),
    "PostgreSQL": ("tutorial", "bench.baseline_app:app"),
}


@dataclass(frozen=True)
class Tail:
    """wrk's latency distribution of one run (or several rounds as one), and the CPU the
    server's worker spent on it."""

    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    """connect, read and write errors (timeouts apart)."""
    timeouts: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    cpu_seconds: float = 0.0

    @property
    def ok_per_second(self) -> float:
        return (self.requests - self.non2xx) / self.seconds if self.seconds else 0.0

    @property
    def spread(self) -> float:
        return self.p99_ms / self.p50_ms if self.p50_ms else float("inf")

    @classmethod
    def total(cls, rounds: list["Tail"]) -> "Tail":
        """Rounds as one run: counts and times add up; p50 is the median round's, the tail
        (p99, p99.9, max) the worst round's."""
        return cls(
            requests=sum(r.requests for r in rounds),
            seconds=sum(r.seconds for r in rounds),
            non2xx=sum(r.non2xx for r in rounds),
            socket_errors=sum(r.socket_errors for r in rounds),
            timeouts=sum(r.timeouts for r in rounds),
            p50_ms=statistics.median(r.p50_ms for r in rounds),
            p99_ms=max(r.p99_ms for r in rounds),
            p999_ms=max(r.p999_ms for r in rounds),
            max_ms=max(r.max_ms for r in rounds),
            cpu_seconds=sum(r.cpu_seconds for r in rounds),
        )


def _wrk(url: str, *, seconds: int, connections: int) -> Tail:
    data = wrk_run(url, _REQUEST, seconds=seconds, connections=connections, timeout=QUEUE_TIMEOUT_S)
    return Tail(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non2xx=data["non2xx"],
        socket_errors=data["connect"] + data["read"] + data["write"],
        timeouts=data["timeout"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


@contextmanager
def _servers(backend: str, folder: Path, server_url: str) -> Iterator[dict[str, LiveServer]]:
    """The three servers of ``backend``, each on a freshly seeded database of its own."""
    baseline, baseline_app = _BASELINES[backend]
    with ExitStack() as stack:
        urls = {}
        for name in ("app", "uvloop", "baseline"):
            if backend == "SQLite":
                urls[name] = sqlite_url(folder / f"tail-{name}.db")
            else:
                urls[name] = stack.enter_context(postgres_database(server_url, f"tail_{name}"))
            seed(urls[name], SMALL)

        def app_serve(name: str, *flags: str) -> LiveServer:
            env = {"DATABASE_URL": urls[name], "MIGRATE_ON_STARTUP": "false"}
            log_path = folder / f"tail-{backend}-{name}.log"
            live = LiveServer(
                env, serve=True, ready_path="/users/1", log_path=log_path, extra_args=flags
            )
            return stack.enter_context(live)

        servers = {_APP: app_serve("app"), _UVLOOP: app_serve("uvloop", "--loop", "uvloop")}
        env = {"DATABASE_URL": urls["baseline"], "MIGRATE_ON_STARTUP": "false"}
        servers[f"baseline: {baseline}"] = stack.enter_context(
            LiveServer(
                env,
                app=baseline_app,
                ready_path="/users/1",
                log_path=folder / f"tail-{backend}-baseline.log",
                # At 128 connections the tutorial's requests queue for its pool: at the end
                # of a run, stop them instead of waiting for them (20 s on PostgreSQL).
                extra_args=(
                    "--no-access-log",
                    "--loop",
                    "asyncio",
                    "--timeout-graceful-shutdown",
                    "1",
                ),
            )
        )
        yield servers


def _measure(
    servers: dict[str, LiveServer], *, round_seconds: int, rounds: int, warmup: int
) -> dict[int, dict[str, Tail]]:
    """Each server at each connection count, in rounds that alternate the servers' order."""
    pids = {name: server.worker_pids() for name, server in servers.items()}
    for name, server in servers.items():
        if warmup:
            _wrk(server.url, seconds=warmup, connections=CONNECTIONS[0])
            settle(pids[name])
    tails: dict[int, dict[str, Tail]] = {}
    for connections in CONNECTIONS:
        done: dict[str, list[Tail]] = {name: [] for name in servers}
        for round_ in range(rounds):
            for name in list(servers)[:: 1 if round_ % 2 == 0 else -1]:
                before = cpu_seconds(pids[name])
                tail = _wrk(servers[name].url, seconds=round_seconds, connections=connections)
                cpu = cpu_seconds(pids[name]) - before
                done[name].append(dataclasses.replace(tail, cpu_seconds=cpu))
                settle(pids[name])
        tails[connections] = {name: Tail.total(runs) for name, runs in done.items()}
    return tails


def _verdict(connections: int, tail: Tail) -> tuple[str, bool]:
    if connections == CONNECTIONS[0]:
        return f"p99 <= {SPREAD_AT_MOST:g}x p50", tail.spread <= SPREAD_AT_MOST
    wanted = f"0 timeouts (> {QUEUE_TIMEOUT_S:g} s), p99 < {P99_AT_MOST_S:g} s"
    return wanted, tail.timeouts == 0 and tail.p99_ms < P99_AT_MOST_S * 1000


def _distribution(tail: Tail) -> tuple[str, ...]:
    """p50, p99, p99.9, max and p99 / p50; dashes when nothing was answered in time."""
    if not tail.requests:
        return ("-",) * 5
    cells = (tail.p50_ms, tail.p99_ms, tail.p999_ms, tail.max_ms)
    return (*(f"{ms:.1f}" for ms in cells), f"{tail.spread:.1f}x")


def tail_table(folder: Path, postgres_url: str, *, seconds: int, rounds: int, warmup: int) -> Table:
    """Section 11 on SQLite, and on PostgreSQL when ``postgres_url`` is set."""
    table = Table(
        f"11. The tail: {_REQUEST.label}, 1 worker, {' and '.join(map(str, CONNECTIONS))} "
        f"connections ({seconds * rounds} s per server and connection count in {rounds} "
        "alternating round(s))",
        (
            "backend",
            "connections",
            "server",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "p99 / p50",
            "errors",
            "timeouts",
            "CPU ms/req",
            "target",
            "met",
        ),
        notes=[
            f"`{_APP}` is the app as shipped (`app serve --workers 1`, its default settings: "
            f"access log on, asyncio's event loop); `{_UVLOOP}` the same on uvloop, uvicorn's "
            "default and what `app serve` ran before; the baseline is a plain app under "
            "`uvicorn --no-access-log --loop asyncio` (SQLite: bench/floor_app.py, bare "
            "Starlette and sqlite3 on the event loop; PostgreSQL: bench/baseline_app.py, "
            "FastAPI's SQL tutorial). A tail that the baseline shares is the machine's; one "
            "it does not is the app's. Each server has a freshly seeded database of its own "
            f"({SMALL.describe()}); rounds alternate the servers' order, and every round is "
            "a new wrk run, so it opens its connections afresh. Latency is wrk's: p50 is "
            "the median round's, p99, p99.9 and max the worst round's. Errors are non-2xx "
            f"answers + socket errors; timeouts are requests unanswered after "
            f"{QUEUE_TIMEOUT_S:g} s (DB_QUEUE_TIMEOUT, wrk's --timeout): an answer, 200 or "
            "503, must come sooner. CPU ms/req is the worker's user + system time per request. "
            "Dashes: no answer within the timeout (the tutorial at 128 connections: its sync "
            "endpoints wait in their threads for a pooled connection that the holders, short "
            "of a thread to close their session, never return; FastAPI issue 3205).",
        ],
    )
    backends = {"SQLite": ""}
    if postgres_url:
        backends["PostgreSQL"] = postgres_url
    for backend, server_url in backends.items():
        progress(f"the tail on {backend}, 1 worker")
        with _servers(backend, folder, server_url) as servers:
            tails = _measure(servers, round_seconds=seconds, rounds=rounds, warmup=warmup)
        for connections, by_server in tails.items():
            for name, tail in by_server.items():
                target, met = "", ""
                if name == _APP:
                    target, ok = _verdict(connections, tail)
                    met = "yes" if ok else "NO"
                    table.targets.append(
                        Target(f"Tail, {backend}, {connections} connections", target, ok)
                    )
                table.add(
                    backend,
                    str(connections),
                    name,
                    f"{tail.ok_per_second:,.0f}",
                    *_distribution(tail),
                    f"{tail.non2xx}+{tail.socket_errors}",
                    str(tail.timeouts),
                    f"{tail.cpu_seconds * 1000 / tail.requests:.2f}" if tail.requests else "-",
                    target,
                    met,
                )
    return table
