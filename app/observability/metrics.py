"""Prometheus metrics, with prometheus-client; every worker of ``app serve`` adds to the same
figures through PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode).

The metric objects are module globals, as prometheus-client intends: creating one opens no
file unless PROMETHEUS_MULTIPROC_DIR is set, and then only in that directory. Labels are
bounded: route templates, never raw paths; a fixed set of methods.
"""

import bisect
import contextlib
import glob
import math
import os
import re
import threading
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
    "flush",
    "forget_dead_processes",
    "instrument_engine",
    "mark_process_dead",
    "observe_outbox",
    "observe_replica",
    "observe_request",
    "register_outbox",
    "request_started",
    "start_flushing",
    "stop_flushing",
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


class _Histogram:
    """A histogram child's observations not yet written: a count per bucket and the sum."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # the last one is +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1  # amount <= bound, as hers
        self.total += seconds

    def write(self) -> None:
        # prometheus-client keeps a value per bucket (cumulated at collection) and the sum:
        # one write per bucket touched, however many observations it got.
        for index, count in enumerate(self.counts):
            if count:
                self.child._buckets[index].inc(count)
                self.counts[index] = 0
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0


class _Batch:
    """What this process measured since its last write to prometheus-client's values.

    In multiprocess mode each increment or observation is a locked write to a memory-mapped
    file (a request made nine: ~10 k instructions each, the larger part of the metrics'
    cost); here it is an addition to a Python number, and ``write`` passes the totals on:
    every ``FLUSH_SECONDS`` from a thread of its own, before this process answers a scrape,
    and at shutdown. A scrape answered by another worker sees this one's figures as of its
    last write, at most ``FLUSH_SECONDS`` old; a worker killed with SIGKILL loses at most
    that much. Pool events and replica reads come from worker threads, hence the lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[Counter, float] = {}
        self.histograms: dict[Histogram, _Histogram] = {}
        self.levels: dict[Gauge, float] = {}
        """The live gauges' values in this process; a gauge is written when it changed."""
        self._written: dict[Gauge, float] = {}
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()

    def count(self, child: Counter) -> None:
        with self.lock:
            self.counts[child] = self.counts.get(child, 0.0) + 1

    def histogram(self, child: Histogram) -> _Histogram:
        found = self.histograms.get(child)
        if found is None:
            found = self.histograms.setdefault(child, _Histogram(child))
        return found

    def add(self, gauge: Gauge, amount: float) -> None:
        with self.lock:
            self.levels[gauge] = self.levels.get(gauge, 0.0) + amount

    def write(self) -> None:
        with self.lock:
            for child, amount in self.counts.items():
                child.inc(amount)
            self.counts.clear()
            for histogram in self.histograms.values():
                histogram.write()
            for gauge, level in self.levels.items():
                if self._written.get(gauge) != level:
                    gauge.set(level)
                    self._written[gauge] = level

    def start(self) -> None:
        """Write every ``FLUSH_SECONDS`` until ``stop`` (idempotent; one thread a process)."""
        if self._flusher is not None and self._flusher.is_alive():
            return
        self._stop.clear()
        self._flusher = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
        self._flusher.start()

    def stop(self) -> None:
        """The last write; the thread ends."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        self.write()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.write()


FLUSH_SECONDS = 1.0
"""How often each process writes what it measured to prometheus-client's values."""
_batch = _Batch()
_batch.levels[_IN_PROGRESS] = 0.0


def request_started() -> None:
    _batch.add(_IN_PROGRESS, 1)


_Bound = tuple[Counter, _Histogram]
_bound: dict[tuple[str, str, int], _Bound] = {}
"""The children of ``_REQUESTS`` and ``_DURATION`` by method, route and status, looked up
once: ``labels()`` costs as much as the increment. Bounded as the labels are."""
_GATE_WAITS = {kind: _batch.histogram(_GATE_WAIT.labels(kind)) for kind in get_args(GateKind)}


def observe_request(
    method: str, route: str, status: int, seconds: float, gate_wait: Mapping[GateKind, float]
) -> None:
    """Count a finished request (and end its ``request_started``)."""
    method = method if method in _METHODS else "other"
    bound = _bound.get((method, route, status))
    if bound is None:
        bound = _bound[(method, route, status)] = (
            _REQUESTS.labels(method, route, str(status)),
            _batch.histogram(_DURATION.labels(method, route)),
        )
    batch = _batch
    with batch.lock:
        batch.levels[_IN_PROGRESS] -= 1
        batch.counts[bound[0]] = batch.counts.get(bound[0], 0.0) + 1
        bound[1].observe(seconds)
        for kind, waited in gate_wait.items():
            _GATE_WAITS[kind].observe(waited)


def flush() -> None:
    """Write what this process measured to prometheus-client's values now (a scrape does)."""
    _batch.write()


def start_flushing() -> None:
    """Write this process's figures every ``FLUSH_SECONDS`` from now on (the lifespan)."""
    _batch.start()


def stop_flushing() -> None:
    """The last write of this process's figures (at shutdown)."""
    _batch.stop()


def count_unavailable(cause: Unavailable) -> None:
    _UNAVAILABLE.labels(cause).inc()


def count_read(engine: str) -> None:
    _batch.count(_READS.labels(engine))


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

    _batch.add(gauge, 0)

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        record.record_info[_COUNTED] = True
        _batch.add(gauge, 1)

    def checkin(dbapi_connection: Any, record: Any) -> None:
        # A failed checkout (the server is down) is checked in without a checkout event.
        if record.record_info.pop(_COUNTED, False):
            _batch.add(gauge, -1)

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    _instrumented.add(engine)


def exposition() -> bytes:
    """The text that ``GET /metrics`` answers: every worker's figures in multiprocess mode."""
    flush()
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
