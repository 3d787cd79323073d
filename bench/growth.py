"""Section 6: how the app's cost grows with the data, the app alone on a large database."""

import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from bench.data import Dataset, postgres_database, seed, sqlite_url
from bench.report import Table
from bench.web import WRITE_BODY, Load, Request, latency, measure, progress, rate, serve

__all__ = ["GROWTH", "TINY", "declares_after_id", "growth_requests", "growth_table"]

GROWTH = Dataset(users=100_000, items_per_user=10)
TINY = Dataset(users=1_000, items_per_user=10)
"""The quick run's stand-in for GROWTH: the same rows and pages, a hundredth of the data."""


def growth_requests(data: Dataset, *, keyset: bool) -> tuple[Request, ...]:
    """The requests, the deep page a hundredth of the items from the end; ``keyset`` adds
    the same page by ``after_id``."""
    deep = data.items * 99 // 100
    pages = [
        Request("GET /items/?limit=100&skip=0", "GET", "/items/?limit=100&skip=0"),
        Request(f"GET /items/?limit=100&skip={deep}", "GET", f"/items/?limit=100&skip={deep}"),
    ]
    if keyset:
        path = f"/items/?limit=100&after_id={deep}"
        pages.append(Request(f"GET {path}", "GET", path))
    return (
        Request("GET /users/{id}", "GET", "/users/%d"),
        *pages,
        Request("POST /users/{id}/items/", "POST", "/users/%d/items/", WRITE_BODY),
    )


def declares_after_id(url: str) -> bool:
    """Whether the app's OpenAPI schema gives ``GET /items/`` an ``after_id`` query parameter."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        connection.request("GET", "/openapi.json")
        response = connection.getresponse()
        if response.status != 200:
            return False
        schema = json.loads(response.read())
    finally:
        connection.close()
    operation = schema.get("paths", {}).get("/items/", {}).get("get", {})
    return any(
        p.get("name") == "after_id" and p.get("in") == "query"
        for p in operation.get("parameters", [])
    )


@contextmanager
def _database(backend: str, folder: Path, server_url: str) -> Iterator[str]:
    if backend == "SQLite":
        yield sqlite_url(folder / "growth.db")
    else:
        with postgres_database(server_url, "bench_growth") as url:
            yield url


def _first_page_share(load: Load, first: Load) -> str:
    return f"{load.p50_ms / first.p50_ms:.1f}x" if first.p50_ms else "-"


def growth_table(
    backend: str,
    folder: Path,
    *,
    data: Dataset,
    seconds: int,
    warmup: int,
    connections: int,
    server_url: str = "",
) -> Table:
    """The app alone (1 worker) on ``data``: SQLite, or a database on ``server_url``."""
    method = "executemany" if backend == "SQLite" else "COPY"
    with _database(backend, folder, server_url) as url:
        progress(f"growth on {backend}: seeding {data.describe()}")
        seeding = seed(url, data)
        log_path = folder / f"growth-{backend.lower()}.log"
        with serve("app", url, workers=1, log_path=log_path) as server:
            keyset = declares_after_id(server.url)
            requests = growth_requests(data, keyset=keyset)
            loads = measure(
                {"app": server},
                requests,
                round_seconds=seconds,
                rounds=1,
                warmup=warmup,
                connections=connections,
                ids=data.users,
                order="random",
            )["app"]
    first = loads[requests[1].label]
    table = Table(
        f"6. Growth on {backend}: the app alone on {data.describe()} (1 worker, "
        f"{connections} connections, {seconds} s per request)",
        (
            "request",
            "req/s",
            "p50 / p99 ms",
            "p50 vs first page",
            "errors",
            "CPU ms/req",
            "peak RSS MiB",
        ),
        notes=[
            f"Seeded in {seeding:.1f} s ({method} in one transaction, schema by create_all). "
            f"User ids are drawn at random from 1..{data.users:,} for every request; the "
            "items pages are the first one and one a hundredth of the items from the end."
        ],
    )
    for request in requests:
        load = loads[request.label]
        table.add(
            request.label,
            rate(load),
            latency(load),
            _first_page_share(load, first) if request.label.startswith("GET /items/") else "",
            f"{load.non2xx}+{load.socket_errors}",
            load.cpu_per_request,
            f"{load.peak_rss_kib / 1024:.0f}",
        )
    for request in requests[2:-1]:
        table.notes.append(
            f"p50 of {request.label.removeprefix('GET ')} / p50 of the first page: "
            f"{_first_page_share(loads[request.label], first)}"
        )
    if not keyset:
        table.notes.append(
            "No after_id row: the app's /openapi.json declares no after_id query parameter "
            "on GET /items/ (keyset pagination) yet."
        )
    return table
