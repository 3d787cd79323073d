"""Section 9: the outbox: what its event row costs ``POST /users/{id}/items/``, and how many
events per second one ``app worker`` delivers to a local webhook receiver."""

import base64
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from app.config import Settings
from app.db.engines import build_engine
from app.db.session import AppSession
from app.models import OutboxEvent
from app.outbox.events import session_info
from app.schemas import ItemCreate
from app.services import ItemService
from app.testing.processes import HOST
from app.testing.server import LiveServer
from bench.data import postgres_database, seed, sqlite_url
from bench.report import Table
from bench.web import REQUESTS, SMALL, latency, measure, progress, rate, ratio

__all__ = ["outbox_table"]

_REQUEST = REQUESTS[2]  # POST /users/{id}/items/
_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
_DELIVERY_TIMEOUT = 60.0


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %"


def outbox_table(
    folder: Path,
    *,
    postgres_url: str,
    seconds: int,
    rounds: int,
    warmup: int,
    connections: int,
    writes: int = 400,
) -> Table:
    round_seconds = max(1, seconds // rounds)
    table = Table(
        f"9. The outbox ({connections} connections, 1 worker, {round_seconds * rounds} s per "
        f"server in {rounds} alternating round(s))",
        (
            "backend",
            "POST item req/s with / without event",
            "throughput cost",
            "CPU ms/req with / without",
            "p50 / p99 ms with",
            "in-process µs/write with / without",
            "worker events/s",
        ),
        notes=[
            "With: the app as shipped (OUTBOX_ENABLED=true: each POST /users/{id}/items/ also "
            "inserts its item.created event in its transaction); without: OUTBOX_ENABLED=false; "
            "each on a database of its own, seeded alike, under uvicorn with no access log. "
            f"In-process: {writes} item creations, one transaction each, through the service "
            "and an AppSession, with and without the event, best of 3 alternating rounds (the "
            "figure load on the machine moves least). Worker: one `app worker` (batch 20, "
            "1 webhook URL) delivering the events the with-server's run wrote to a threaded "
            "HTTP receiver on 127.0.0.1 answering 204 at once, from its first delivery to "
            "its last.",
        ],
    )
    backends: list[tuple[str, Any]] = [("SQLite", None)]
    if postgres_url:
        backends.append(("PostgreSQL", postgres_url))
    for backend, server_url in backends:
        with ExitStack() as stack:
            urls = {}
            for name in ("with", "without"):
                if server_url:
                    url = stack.enter_context(postgres_database(server_url, f"bench_outbox_{name}"))
                else:
                    url = sqlite_url(folder / f"outbox-{name}.db")
                seed(url, SMALL)
                urls[name] = url
            micro = _in_process(urls["without"], writes)
            servers = {
                name: stack.enter_context(_server(url, name == "with", folder / f"{name}.log"))
                for name, url in urls.items()
            }
            progress(f"outbox, {backend}")
            runs = measure(
                servers,
                (_REQUEST,),
                round_seconds=round_seconds,
                rounds=rounds,
                warmup=warmup,
                connections=connections,
            )
            for server in servers.values():
                server.stop()
            delivered = _worker_rate(urls["with"], folder / f"worker-{backend}.log")
        on, off = runs["with"][_REQUEST.label], runs["without"][_REQUEST.label]
        table.add(
            backend,
            f"{rate(on)} / {rate(off)}",
            _percent(1 - ratio(on, off)),
            f"{on.cpu_per_request} / {off.cpu_per_request}",
            latency(on),
            f"{micro[True]:.0f} / {micro[False]:.0f}",
            delivered,
        )
    return table


@contextlib.contextmanager
def _server(url: str, events: bool, log_path: Path) -> Iterator[LiveServer]:
    env = {
        "DATABASE_URL": url,
        "MIGRATE_ON_STARTUP": "false",
        "OUTBOX_ENABLED": str(events).lower(),
    }
    with LiveServer(
        env, 1, ready_path="/users/1", log_path=log_path, extra_args=("--no-access-log",)
    ) as server:
        yield server


def _in_process(url: str, writes: int) -> dict[bool, float]:
    """µs per item creation (one transaction each), with and without its event."""
    engine = build_engine(Settings(DATABASE_URL=url))
    items = ItemService()
    best: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(3):
            for enabled in (True, False):
                info = session_info(Settings(DATABASE_URL=url, OUTBOX_ENABLED=enabled))
                started = time.perf_counter()
                for n in range(writes):
                    with AppSession(bind=engine, info=info) as session, session.begin():
                        body = ItemCreate(title=f"micro {n}")
                        items.create_for_user(session, 1 + n % SMALL.users, body, caller_id=None)
                best[enabled].append((time.perf_counter() - started) / writes * 1e6)
    finally:
        engine.dispose()
    return {enabled: min(times) for enabled, times in best.items()}


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    times: list[float]


class _Answer(BaseHTTPRequestHandler):
    server: _Receiver
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver: no connection per event

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.server.times.append(time.perf_counter())
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _pending(engine: Engine) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.due_at.is_not(None))
        return connection.scalar(query) or 0


def _worker_rate(url: str, log_path: Path) -> str:
    engine = build_engine(Settings(DATABASE_URL=url))
    receiver = _Receiver((HOST, 0), _Answer)
    receiver.times = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    pending = _pending(engine)
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields} | {
        "DATABASE_URL": url,
        "WEBHOOK_URLS": f"http://{HOST}:{receiver.server_address[1]}/hook",
        "WEBHOOK_SECRET": _SECRET,
        "OUTBOX_POLL_SECONDS": "0.05",
        "LOG_LEVEL": "warning",
    }
    try:
        with log_path.open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"], env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + _DELIVERY_TIMEOUT
        while _pending(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        worker.terminate()
        worker.wait(timeout=30)
    finally:
        receiver.shutdown()
        receiver.server_close()
        engine.dispose()
    times = receiver.times
    if len(times) < 2:
        return "-"
    per_second = (len(times) - 1) / (times[-1] - times[0])
    return f"{per_second:,.0f} ({len(times):,} of {pending:,} events)"
