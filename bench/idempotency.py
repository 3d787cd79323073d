"""Section 10: what an Idempotency-Key costs on POST /users/{id}/items/, SQLite and PostgreSQL."""

import dataclasses
from contextlib import ExitStack
from pathlib import Path

from app.testing.server import LiveServer
from bench.data import postgres_database, seed, sqlite_url
from bench.report import Table
from bench.server import cpu_seconds
from bench.web import (
    REQUESTS,
    SMALL,
    Load,
    Request,
    latency,
    progress,
    rate,
    ratio,
    serve,
    settle,
    times,
    wrk_run,
)

__all__ = ["idempotency_table"]

_PLAIN = REQUESTS[2]  # POST /users/{id}/items/
_KEYED = dataclasses.replace(_PLAIN, keyed=True)


def idempotency_table(
    folder: Path,
    server_url: str,
    *,
    seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
) -> Table:
    """One app server per backend (1 worker), loaded in alternating rounds with the POST
    without a key and with a fresh key per request (every one claims, runs and stores)."""
    round_seconds = max(1, seconds // rounds)
    table = Table(
        f"10. Idempotency-Key on POST /users/{{id}}/items/ ({connections} connections, 1 "
        f"worker, {round_seconds * rounds} s per variant in {rounds} alternating round(s))",
        (
            "backend",
            "without key req/s",
            "fresh key req/s",
            "with / without",
            "p50 / p99 ms without",
            "p50 / p99 ms with",
            "CPU ms/req without / with",
            "errors without / with",
        ),
        notes=[
            "The same server and database for both variants, in alternating rounds. With a "
            "key, each request's transaction also inserts the key's row (INSERT ... ON "
            "CONFLICT DO NOTHING; on PostgreSQL with a statement-local lock_timeout), "
            "serializes the answer and stores it (UPDATE): two statements more per write, "
            "and a row more in idempotency_keys. Every key is new, the worst case: a "
            "replay does less than the request it repeats. CPU ms/req counts the uvicorn "
            "worker only.",
        ],
    )
    backends = [("SQLite", "")] + ([("PostgreSQL", server_url)] if server_url else [])
    for backend, url in backends:
        with ExitStack() as stack:
            if url:
                database = stack.enter_context(postgres_database(url, "bench_idempotency"))
            else:
                database = sqlite_url(folder / "idempotency.db")
            seed(database, SMALL)
            log_path = folder / f"idempotency-{backend}.log"
            server = stack.enter_context(serve("app", database, workers=1, log_path=log_path))
            progress(f"Idempotency-Key, {backend}, 1 worker")
            plain, keyed = _alternate(server, round_seconds, rounds, warmup, connections)
        table.add(
            backend,
            rate(plain),
            rate(keyed),
            times(ratio(keyed, plain)),
            latency(plain),
            latency(keyed),
            f"{plain.cpu_per_request} / {keyed.cpu_per_request}",
            f"{plain.non2xx}+{plain.socket_errors} / {keyed.non2xx}+{keyed.socket_errors}",
        )
    return table


def _alternate(
    server: LiveServer, round_seconds: int, rounds: int, warmup: int, connections: int
) -> tuple[Load, Load]:
    pids = server.worker_pids()
    variants = (_PLAIN, _KEYED)
    if warmup:
        for request in variants:
            wrk_run(server.url, request, seconds=warmup, connections=connections)
            settle(pids)
    done: dict[Request, list[Load]] = {request: [] for request in variants}
    for round_ in range(rounds):
        for request in variants[:: 1 if round_ % 2 == 0 else -1]:
            before = cpu_seconds(pids)
            load = Load.of(
                wrk_run(server.url, request, seconds=round_seconds, connections=connections)
            )
            used = cpu_seconds(pids) - before
            done[request].append(dataclasses.replace(load, cpu_seconds=used))
            settle(pids)
    return Load.total(done[_PLAIN]), Load.total(done[_KEYED])
