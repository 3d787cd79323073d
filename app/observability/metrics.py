"""Prometheus metrics, with prometheus-client; every worker of ``app serve`` adds to the same
figures through PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode).

The metric objects are module globals, as prometheus-client intends: creating one opens no
file unless PROMETHEUS_MULTIPROC_DIR is set, and then only in that directory. Labels are
bounded: route templates, never raw paths; a fixed set of methods.
"""

import contextlib
import glob
import math
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import Engine, event

from app.request_context import GateKind

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_DIR_ENV",
    "Unavailable",
    "count_outbox",
    "count_read",
    "count_unavailable",
    "declare_engines",
    "exposition",
    "forget_dead_processes",
    "instrument_engine",
    "mark_process_dead",
    "observe_outbox",
    "observe_replica",
    "observe_request",
    "register_outbox",
    "request_started",
]

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
Unavailable = Literal["gate_timeout", "request_limit", "database_unavailable", "draining"]

_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template",
    ["method", "route"],
)
_IN_PROGRESS = Gauge(
    "http_requests_in_progress",
    "Requests being served right now",
    multiprocess_mode="livesum",
)
_GATE_WAIT = Histogram(
    "db_gate_wait_seconds",
    "Time a request's units of database work waited for a gate slot, by kind of gate",
    ["kind"],
)
_UNAVAILABLE = Counter(
    "http_503_responses_total",
    "503 answers by cause: gate_timeout (no slot within DB_QUEUE_TIMEOUT), request_limit "
    "(MAX_CONCURRENT_REQUESTS), database_unavailable (an error from the database or its "
    "pool), draining (readiness while shutting down)",
    ["cause"],
)
_CONNECTIONS = Gauge(
    "db_connections_in_use",
    "Connections checked out of each engine's pool",
    ["engine"],
    multiprocess_mode="livesum",
)
_READS = Counter(
    "db_reads_total",
    "Read units of work answered, by the engine that ran them (engine: the primary, "
    "replica-N: DATABASE_REPLICA_URLS' N-th); only with replicas configured",
    ["engine"],
)
_REPLICA_UP = Gauge(
    "db_replica_up",
    "1 while a replica answers its checks, 0 while it is down (the lowest over all workers)",
    ["engine"],
    multiprocess_mode="livemin",
)
_REPLICA_LAG = Gauge(
    "db_replica_lag_seconds",
    "Seconds a replica is behind the primary, at its last check (the highest over all "
    "workers); NaN while it is down",
    ["engine"],
    multiprocess_mode="livemax",
)

# The outbox's, registered by `app worker` only (register_outbox): the API's /metrics would
# show them at 0 forever. The gauges are the table's figures, which every worker reads.
OutboxOutcome = Literal["delivered", "retried", "dead"]
_OUTBOX_ATTEMPTS = Counter(
    "outbox_attempts_total",
    "Outbox delivery attempts by outcome: delivered, retried (failed, tried again after a "
    "backoff), dead (failed its last allowed attempt)",
    ["outcome"],
    registry=None,
)
_OUTBOX_PENDING = Gauge("outbox_events_pending", "Events not yet delivered nor dead", registry=None)
_OUTBOX_OLDEST = Gauge(
    "outbox_oldest_pending_age_seconds",
    "Age of the oldest event not yet delivered nor dead (0: none)",
    registry=None,
)
_OUTBOX_DEAD = Gauge(
    "outbox_events_dead", "Events parked as dead (app outbox dead, redrive)", registry=None
)
for _outcome in get_args(OutboxOutcome):
    _OUTBOX_ATTEMPTS.labels(_outcome)

# Every cause and kind from the start, at 0: a series that appears only with its first
# event makes rate() and alerts on it blind until then.
for _cause in get_args(Unavailable):
    _UNAVAILABLE.labels(_cause)
for _kind in get_args(GateKind):
    _GATE_WAIT.labels(_kind)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_COUNTED = "app.metrics.checked_out"
_instrumented: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")


def request_started() -> None:
    _IN_PROGRESS.inc()


_Bound = tuple[Counter, Histogram]
_bound: dict[tuple[str, str, int], _Bound] = {}
"""The children of ``_REQUESTS`` and ``_DURATION`` by method, route and status, looked up
once: ``labels()`` costs as much as the increment. Bounded as the labels are."""
_GATE_WAITS = {kind: _GATE_WAIT.labels(kind) for kind in get_args(GateKind)}


def observe_request(
    method: str, route: str, status: int, seconds: float, gate_wait: Mapping[GateKind, float]
) -> None:
    """Count a finished request (and end its ``request_started``)."""
    _IN_PROGRESS.dec()
    method = method if method in _METHODS else "other"
    bound = _bound.get((method, route, status))
    if bound is None:
        bound = _bound[(method, route, status)] = (
            _REQUESTS.labels(method, route, str(status)),
            _DURATION.labels(method, route),
        )
    bound[0].inc()
    bound[1].observe(seconds)
    for kind, waited in gate_wait.items():
        _GATE_WAITS[kind].observe(waited)


def count_unavailable(cause: Unavailable) -> None:
    _UNAVAILABLE.labels(cause).inc()


def count_read(engine: str) -> None:
    _READS.labels(engine).inc()


def declare_engines(engines: Sequence[str]) -> None:
    """``db_reads_total`` for each of ``engines`` at 0, before their first read."""
    for engine in engines:
        _READS.labels(engine)


def observe_replica(engine: str, *, up: bool, lag: float | None) -> None:
    _REPLICA_UP.labels(engine).set(1 if up else 0)
    _REPLICA_LAG.labels(engine).set(math.nan if lag is None else lag)


def register_outbox() -> None:
    """Add the outbox's metrics to the registry that /metrics (or the worker's port) serves."""
    for collector in (_OUTBOX_ATTEMPTS, _OUTBOX_PENDING, _OUTBOX_OLDEST, _OUTBOX_DEAD):
        with contextlib.suppress(ValueError):  # already registered
            REGISTRY.register(collector)


def count_outbox(outcome: OutboxOutcome) -> None:
    _OUTBOX_ATTEMPTS.labels(outcome).inc()


def observe_outbox(*, pending: int, oldest_age: float, dead: int) -> None:
    _OUTBOX_PENDING.set(pending)
    _OUTBOX_OLDEST.set(oldest_age)
    _OUTBOX_DEAD.set(dead)


def instrument_engine(engine: Engine, name: str) -> None:
    """Keep ``db_connections_in_use{engine=name}`` up to date from ``engine``'s pool events;
    idempotent. Each process writes its own value as it changes (a value computed at scrape
    time would only ever see the pool of the worker that answers the scrape)."""
    if engine in _instrumented:
        return
    gauge = _CONNECTIONS.labels(name)

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        record.record_info[_COUNTED] = True
        gauge.inc()

    def checkin(dbapi_connection: Any, record: Any) -> None:
        # A failed checkout (the server is down) is checked in without a checkout event.
        if record.record_info.pop(_COUNTED, False):
            gauge.dec()

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    _instrumented.add(engine)


def exposition() -> bytes:
    """The text that ``GET /metrics`` answers: every worker's figures in multiprocess mode."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def mark_process_dead(pid: int | None = None) -> None:
    """Drop a process's share of the live gauges (in progress, connections): at a worker's
    shutdown for itself, and at startup for workers that died without one."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if directory:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, directory)  # type: ignore[no-untyped-call]


def forget_dead_processes() -> None:
    """``mark_process_dead`` for every process that wrote live gauges and no longer runs (a
    worker killed by the OOM killer, say, that uvicorn replaced)."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if not directory:
        return
    pids = {
        int(found.group(1))
        for path in glob.glob(os.path.join(directory, "gauge_live*.db"))
        if (found := _LIVE_GAUGE_FILE.fullmatch(os.path.basename(path)))
    }
    for pid in pids:
        if not _running(pid):
            mark_process_dead(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
