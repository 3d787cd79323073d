"""Section 8: reads with one streaming standby against the primary only, while the primary
is busy with writes; the section starts its own primary and standby."""

import http.client
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from app.replicas.replica_set import PRIMARY
from app.testing.postgres import PostgresServer, missing_binaries
from app.testing.server import LiveServer
from bench.data import seed
from bench.report import Table
from bench.web import (
    REQUESTS,
    SMALL,
    Load,
    Request,
    latency,
    progress,
    rate,
    ratio,
    settle,
    times,
    wrk_run,
    wrk_timeout,
)

__all__ = [
    "READS",
    "REPLICAS_TITLE",
    "WRITER_CONNECTIONS",
    "WRITES",
    "replicas_missing",
    "replicas_table",
]

REPLICAS_TITLE = "8. Read replica"
READS = REQUESTS[:2]  # GET /users/{id}, GET /items/?limit=100
WRITES = REQUESTS[2]  # POST /users/{id}/items/
WRITER_CONNECTIONS = 8
"""The background writers' wrk connections: a fixed, bounded write load on the primary."""
Config = Literal["A", "B"]
CONFIGS: tuple[Config, ...] = ("A", "B")
_DATABASES: dict[Config, str] = {"A": "bench_primary_only", "B": "bench_with_replica"}
_REPLICA = "replica-1"
_REPLAY_TIMEOUT = 60.0
_STATS_FLUSH = 1.5
"""PostgreSQL flushes a backend's statistics at most once a second, within a second of it
going idle: wait this long before reading the standby's pg_stat_database."""
_READS_TOTAL = re.compile(r'^db_reads_total\{engine="([^"]+)"\}\s+(\S+)$', re.MULTILINE)


def replicas_missing() -> str:
    """Why section 8 cannot run here (the PostgreSQL binaries it needs), or ``""``."""
    missing = [name for name in missing_binaries() if name != "pgbouncer"]
    if not missing:
        return ""
    return (
        f"### {REPLICAS_TITLE}: not run\n\n"
        f"Section 8 starts its own PostgreSQL primary and streaming standby, but "
        f"{', '.join(missing)} cannot be found (PATH, /usr/local/bin, /usr/lib/postgresql/*/"
        "bin). Install PostgreSQL (`sudo apt-get install postgresql`), then run "
        "`make bench` again."
    )


@dataclass(frozen=True)
class _Run:
    reads: Load
    writes: Load


def _psycopg_url(server: PostgresServer, database: str) -> str:
    return server.url(database).replace("postgresql://", "postgresql+psycopg://", 1)


def _query(url: str, query: Any, *params: object) -> Any:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
        row = connection.execute(query, params).fetchone()
        assert row is not None
        return row[0]


def _wait_for_replay(primary: PostgresServer, standby: PostgresServer) -> float:
    """Until the standby has replayed everything the primary wrote so far; seconds waited."""
    started = time.monotonic()
    while not standby.has_replayed(primary):
        if time.monotonic() - started > _REPLAY_TIMEOUT:
            raise RuntimeError(
                f"the standby did not replay the primary's WAL within {_REPLAY_TIMEOUT:.0f} s"
            )
        time.sleep(0.05)
    for database in _DATABASES.values():
        users = _query(standby.url(database), "SELECT count(*) FROM users")
        items = _query(standby.url(database), "SELECT count(*) FROM items")
        if (users, items) != (SMALL.users, SMALL.items):
            raise RuntimeError(f"the standby's {database} has {users} users and {items} items")
    return time.monotonic() - started


def _standby_transactions(standby: PostgresServer) -> dict[Config, int]:
    """Transactions (commits and rollbacks) each configuration's database has run on the
    standby so far, as its statistics say."""
    with psycopg.connect(standby.url(), autocommit=True, connect_timeout=10) as connection:
        rows = connection.execute(
            "SELECT datname, xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = ANY(%s)",
            (list(_DATABASES.values()),),
        ).fetchall()
    counts = {name: int(total) for name, total in rows}
    return {config: counts.get(database, 0) for config, database in _DATABASES.items()}


def _reads_by_engine(server: LiveServer) -> dict[str, float]:
    """``db_reads_total`` by engine from the server's ``/metrics``."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"GET /metrics answered {response.status}")
    return {engine: float(value) for engine, value in _READS_TOTAL.findall(body)}


def _serve(
    config: Config, primary: PostgresServer, standby: PostgresServer, log: Path
) -> LiveServer:
    """The app as the other sections serve it (``uvicorn --workers 1 --no-access-log``), with
    metrics on in both configurations; only B has the standby as a replica."""
    database = _DATABASES[config]
    env = {
        "DATABASE_URL": _psycopg_url(primary, database),
        "DATABASE_REPLICA_URLS": _psycopg_url(standby, database) if config == "B" else "",
        "MIGRATE_ON_STARTUP": "false",
        "METRICS_ENABLED": "true",
    }
    return LiveServer(env, 1, ready_path="/users/1", log_path=log, extra_args=("--no-access-log",))


def _load(
    pool: ThreadPoolExecutor,
    server: LiveServer,
    request: Request,
    *,
    seconds: int,
    connections: int,
    writers: int,
) -> _Run:
    """``request`` under wrk while another wrk writes through the same server, both at once."""
    writes = pool.submit(wrk_run, server.url, WRITES, seconds=seconds, connections=writers)
    reads = wrk_run(server.url, request, seconds=seconds, connections=connections)
    return _Run(Load.of(reads), Load.of(writes.result()))


def _share(replica: float, primary: float) -> str:
    total = replica + primary
    return f"{replica * 100 / total:.1f} %" if total else "-"


def _errors(a: Load, b: Load) -> str:
    return f"{a.non2xx}+{a.socket_errors} / {b.non2xx}+{b.socket_errors}"


def replicas_table(
    folder: Path,
    *,
    seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
    writers: int = WRITER_CONNECTIONS,
) -> Table:
    """Section 8: A (reads and writes on the primary) against B (reads on one streaming
    standby, writes on the primary), each read request with ``writers`` wrk connections
    posting items through the same app meanwhile; 1 worker, alternating rounds."""
    round_seconds = max(1, seconds // rounds)
    table = Table(
        f"{REPLICAS_TITLE} under writes: one streaming standby (B) versus the primary only "
        f"(A) ({connections} reading + {writers} writing connections, 1 worker, "
        f"{round_seconds * rounds} s per configuration and request in {rounds} alternating "
        "round(s))",
        (
            "read request",
            "A req/s",
            "B req/s",
            "B / A",
            "A p50 / p99 ms",
            "B p50 / p99 ms",
            "writes/s A / B",
            "A write p50 / p99 ms",
            "B write p50 / p99 ms",
            "read errors A / B",
            "write errors A / B",
            "B reads on the replica",
            "B reads replica / primary",
            "standby xacts A / B",
        ),
    )
    progress("read replicas: a primary and a streaming standby")
    with ExitStack() as stack:
        primary = stack.enter_context(PostgresServer.create(databases=list(_DATABASES.values())))
        standby = stack.enter_context(primary.standby())
        seeding = sum(seed(_psycopg_url(primary, db), SMALL) for db in _DATABASES.values())
        replay = _wait_for_replay(primary, standby)
        servers = {
            config: stack.enter_context(
                _serve(config, primary, standby, folder / f"replicas-{config}.log")
            )
            for config in CONFIGS
        }
        pids = {config: server.worker_pids() for config, server in servers.items()}
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        served = {_REPLICA: 0.0, PRIMARY: 0.0}
        standby_total = dict.fromkeys(CONFIGS, 0)
        a_reads_counted = 0.0

        def run(config: Config, request: Request, seconds: int) -> _Run:
            """One round of ``request`` under writes; then until the server is idle again."""
            done = _load(
                pool,
                servers[config],
                request,
                seconds=seconds,
                connections=connections,
                writers=writers,
            )
            settle(pids[config])
            return done

        for request in READS:
            progress(f"replicas, {request.label} under writes: A, B, {rounds} round(s) each")
            for config in CONFIGS if warmup else ():
                run(config, request, warmup)
            time.sleep(_STATS_FLUSH)
            metrics_before = {c: _reads_by_engine(servers[c]) for c in CONFIGS}
            standby_before = _standby_transactions(standby)
            done: dict[Config, list[_Run]] = {config: [] for config in CONFIGS}
            for round_ in range(rounds):
                for config in CONFIGS[:: 1 if round_ % 2 == 0 else -1]:
                    done[config].append(run(config, request, round_seconds))
            time.sleep(_STATS_FLUSH)
            metrics_after = {c: _reads_by_engine(servers[c]) for c in CONFIGS}
            standby_after = _standby_transactions(standby)
            counted = {
                c: {
                    engine: metrics_after[c].get(engine, 0.0) - metrics_before[c].get(engine, 0.0)
                    for engine in (_REPLICA, PRIMARY)
                }
                for c in CONFIGS
            }
            xacts = {c: standby_after[c] - standby_before[c] for c in CONFIGS}
            for engine in served:
                served[engine] += counted["B"][engine]
            for config in CONFIGS:
                standby_total[config] += xacts[config]
            a_reads_counted += sum(counted["A"].values())
            reads = {c: Load.total([run.reads for run in done[c]]) for c in CONFIGS}
            writes = {c: Load.total([run.writes for run in done[c]]) for c in CONFIGS}
            table.add(
                request.label,
                rate(reads["A"]),
                rate(reads["B"]),
                times(ratio(reads["B"], reads["A"])),
                latency(reads["A"]),
                latency(reads["B"]),
                f"{rate(writes['A'])} / {rate(writes['B'])}",
                latency(writes["A"]),
                latency(writes["B"]),
                _errors(reads["A"], reads["B"]),
                _errors(writes["A"], writes["B"]),
                _share(counted["B"][_REPLICA], counted["B"][PRIMARY]),
                f"{counted['B'][_REPLICA]:,.0f} / {counted['B'][PRIMARY]:,.0f}",
                f"{xacts['A']:,} / {xacts['B']:,}",
            )
    replica, on_primary = served[_REPLICA], served[PRIMARY]
    table.notes = [
        f"The replica served {_share(replica, on_primary)} of B's measured reads "
        f"({replica:,.0f} of {replica + on_primary:,.0f}, db_reads_total in B's /metrics); "
        f"A has no replica, and the standby ran {standby_total['A']:,} transactions in A's "
        f"database meanwhile ({standby_total['B']:,} in B's).",
        "A primary and a streaming hot standby of it (pg_basebackup -R; "
        "app.testing.postgres: fsync and synchronous_commit off) run on 127.0.0.1 for this "
        f"section; each configuration has a database of its own ({SMALL.describe()}, seeded "
        f"with COPY on the primary, both in {seeding:.1f} s; the standby had replayed them "
        f"{replay:.1f} s later, pg_last_wal_replay_lsn() against the primary's WAL insert "
        "position). A: DATABASE_URL on the primary. B: the same plus DATABASE_REPLICA_URLS "
        "naming its database on the standby, so Read units (GET) run there and writes on "
        "the primary. Both run `uvicorn app.main:app --workers 1 --no-access-log` with "
        "METRICS_ENABLED=true (so the telemetry costs both the same). While wrk reads, a "
        f"second wrk posts items through the same app on {writers} connections for the "
        "same time: writes/s are its 2xx answers, the primary's work in both. Neither wrk "
        "keeps cookies or sends X-Wal-Position, so no read waits for a write's WAL "
        "position. Rounds alternate A and B; req/s counts 2xx answers over all rounds; p50 "
        "is the median round's, p99 the worst round's; errors are non-2xx + socket errors "
        f"(a request gets {wrk_timeout(round_seconds)} s). B's reads on the replica are "
        "db_reads_total{engine=replica-1} against {engine=engine} (the primary) in B's "
        "/metrics over the measured rounds; standby xacts, an independent count, are the "
        "commits + rollbacks of each database in pg_stat_database on the standby over the "
        "same rounds (read 1.5 s after them, once the backends have reported): B's include "
        "the pool's pre-ping and the replica checks, A's must be 0.",
        "Both PostgreSQL servers, the app and wrk share this machine's CPUs: a replica "
        "adds capacity only where the machine has cores to spare, so B / A here says what "
        "routing costs or saves on one box, not what a replica on its own host gives.",
    ]
    if a_reads_counted:
        table.notes.append(
            f"A's /metrics counted {a_reads_counted:,.0f} routed reads without a replica."
        )
    return table
