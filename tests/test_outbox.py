"""The transactional outbox: one event per committed change, none for a rolled-back one, and
``app worker`` (real processes) delivering them as Standard Webhooks to a real receiver."""

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from app.cli import main
from app.config import Settings
from app.database import SessionLocal
from app.main import create_app
from app.models import OutboxEvent
from app.outbox.events import event_name
from app.outbox.store import Attempt, Outbox, backoff
from app.schemas import ItemCreate
from app.services import ItemService
from app.testing.plugin import VIA_PGBOUNCER, count_rows, requested_settings, settings_free_environ
from app.testing.processes import HOST, free_port
from app.units.gate import Gate
from app.units.writer import Writer
from containers import container
from tests.factories import create_item, create_user

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
TYPES = {
    f"{name}.{action}" for name in ("user", "item") for action in ("created", "updated", "deleted")
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def events() -> list[OutboxEvent]:
    with SessionLocal() as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


def payloads() -> list[dict[str, Any]]:
    return [json.loads(event.payload) for event in events()]


# Writing events


@pytest.mark.pgbouncer
def test_each_change_writes_one_event_with_the_resource_as_the_api_returns_it(
    client: TestClient,
) -> None:
    user = create_user(client, "alice@example.com", password="s3cret-pw")
    created = client.post(
        f"/users/{user['id']}/items/", json={"title": "Pen"}, headers={"traceparent": TRACEPARENT}
    ).json()
    changed = client.patch(f"/items/{created['id']}", json={"title": "Ink"}).json()
    assert client.delete(f"/items/{created['id']}").status_code == 200
    renamed = client.patch(f"/users/{user['id']}", json={"email": "al@example.com"}).json()
    assert client.delete(f"/users/{user['id']}").status_code == 200

    found = payloads()
    assert [(p["type"], p["data"]) for p in found] == [
        ("user.created", user),
        ("item.created", created),
        ("item.updated", changed),
        ("item.deleted", changed),
        ("user.updated", renamed),
        ("user.deleted", renamed),
    ]
    assert all(set(p) == {"type", "timestamp", "data"} for p in found)
    assert all(p["timestamp"].endswith("Z") for p in found)
    rows = events()
    assert len({row.id for row in rows}) == 6
    assert all(row.id.startswith("msg_") and len(row.id) == 30 for row in rows)
    assert [row.traceparent for row in rows][:2] == [None, TRACEPARENT]
    text = " ".join(row.payload for row in rows)
    assert "s3cret-pw" not in text
    assert "password" not in text
    assert "$argon2" not in text


@pytest.mark.pgbouncer
def test_rolled_back_writes_leave_no_event(client: TestClient) -> None:
    user = create_user(client, "bob@example.com")
    item = create_item(client, user["id"])
    before = count_rows(OutboxEvent)
    taken = {"email": "bob@example.com", "password": "x"}
    assert client.post("/users/", json=taken).status_code == 400
    stale = {"If-Match": '"999"'}
    assert (
        client.patch(f"/items/{item['id']}", json={"title": "x"}, headers=stale).status_code == 412
    )
    assert client.delete(f"/users/{user['id']}", headers=stale).status_code == 412
    assert client.post("/users/999999/items/", json={"title": "x"}).status_code == 404
    assert client.delete("/items/999999").status_code == 404
    assert count_rows(OutboxEvent) == before


def test_a_group_commit_with_a_failing_member_keeps_exactly_the_committed_events(
    client: TestClient,
) -> None:
    owner = create_user(client, "carol@example.com")["id"]
    before = count_rows(OutboxEvent)
    write = Writer(Gate(1, 10), container.session, batch_size=16)
    items = ItemService()
    outcomes: dict[int, int | LookupError] = {}

    def add(session: Session, n: int) -> int:
        item = items.create_for_user(session, owner, ItemCreate(title=f"t{n}"), caller_id=None)
        assert item is not None
        if n == 3:
            raise LookupError("unit 3 fails after its event was written")
        return item.id

    async def one(n: int) -> None:
        try:
            outcomes[n] = await write(add, n)
        except LookupError as error:
            outcomes[n] = error

    async def run() -> None:
        async with anyio.create_task_group() as tasks:
            for n in range(10):
                tasks.start_soon(one, n)

    anyio.run(run)
    assert isinstance(outcomes.pop(3), LookupError)
    ids = sorted(i for i in outcomes.values() if isinstance(i, int))
    titles = sorted(p["data"]["title"] for p in payloads()[before:])
    assert titles == sorted(f"t{n}" for n in range(10) if n != 3)
    assert sorted(p["data"]["id"] for p in payloads()[before:]) == ids


def test_outbox_enabled_off_writes_no_event(schema: Engine, settings: Settings) -> None:
    off = settings.model_copy(update={"OUTBOX_ENABLED": False})
    with container.settings.override(off), TestClient(create_app()) as client:
        user = create_user(client, "dan@example.com")
        create_item(client, user["id"])
    assert count_rows(OutboxEvent) == 0


def test_event_names_come_from_the_model_and_backoff_grows_to_its_cap() -> None:
    class AuthSession:
        pass

    class Named:
        __event_name__ = "thing"

    assert event_name(AuthSession) == "auth_session"
    assert event_name(Named) == "thing"
    assert 1 <= backoff(1, 2, 60) <= 2
    assert 4 <= backoff(3, 2, 60) <= 8
    assert 30 <= backoff(40, 2, 60) <= 60


@pytest.mark.parametrize(
    "values",
    [
        {"WEBHOOK_URLS": "https://hooks.example.com/x"},  # no secret
        {"WEBHOOK_URLS": "https://h.example.com", "WEBHOOK_SECRET": "whsec_dG9vc2hvcnQ="},
        {"WEBHOOK_URLS": "ftp://h.example.com", "WEBHOOK_SECRET": SECRET},
        {"OUTBOX_LEASE_SECONDS": 5, "WEBHOOK_TIMEOUT_SECONDS": 10},
    ],
)
def test_webhook_settings_are_checked_at_start_without_echoing_them(
    values: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError) as caught:
        requested_settings(**values)
    message = str(caught.value)
    assert "dG9vc2hvcnQ" not in message
    assert "h.example.com" not in message
    ok = requested_settings(WEBHOOK_URLS="https://h.example.com", WEBHOOK_SECRET=SECRET)
    assert isinstance(ok.WEBHOOK_SECRET, SecretStr)
    assert SECRET not in repr(ok)


@pytest.mark.pgbouncer
def test_the_table_s_life_claims_leases_outcomes_redrive_and_pruning(
    client: TestClient, schema: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    make_changes(client, 3)
    outbox = Outbox(schema)
    token, claimed = outbox.claim(10, lease=60)
    assert [c.attempts for c in claimed] == [1, 1, 1]
    assert outbox.claim(10, lease=60)[1] == []  # leased: nobody else's to claim
    first, second, third = claimed
    attempts = [
        Attempt(first, {"a"}, None, 0),
        Attempt(second, {"a"}, "b: HTTP 500", 30),
        Attempt(third, set(), "a: HTTP 500", 0),
    ]
    assert outbox.finish(token, attempts, max_attempts=1) == ["delivered", "dead", "dead"]
    assert outbox.finish("not-the-lease", attempts[:1], max_attempts=1) == ["lost"]
    assert outbox.stats().pending == 0
    assert outbox.stats().dead == 2
    assert main(["outbox", "stats"]) == 0
    assert "pending 0" in capsys.readouterr().out
    assert main(["outbox", "redrive"]) == 2  # neither ids nor --all
    assert main(["outbox", "redrive", "--all"]) == 0
    assert "2 dead events made due again" in capsys.readouterr().out
    token, again = outbox.claim(10, lease=60)
    assert [(c.id, c.attempts, c.done) for c in again] == [
        (second.id, 1, frozenset({"a"})),  # what was served stays served
        (third.id, 1, frozenset()),
    ]
    assert outbox.prune(retention_seconds=3600) == 0  # too recent
    assert outbox.prune(retention_seconds=-1) == 1  # the delivered one, not the others
    assert count_rows(OutboxEvent) == 2


# Delivering them: a receiver on 127.0.0.1 and `app worker` processes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen()'s backlog: 5 by default, fewer than the workers' posts


@dataclass
class Receiver:
    """A threaded HTTP server: each path answers as ``behave[path](request_number)`` says
    (a status, or a (status, seconds to wait first) pair), and every request is kept."""

    behave: dict[str, Callable[[int], int | tuple[int, float]]]
    requests: list[tuple[str, float, dict[str, str], bytes]] = field(default_factory=list)
    started: list[tuple[str, str]] = field(default_factory=list)
    """(path, webhook-id) of each request as it arrives."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def ids(self, path: str) -> list[str]:
        with self.lock:
            return [headers["webhook-id"] for p, _, headers, _ in self.requests if p == path]

    @contextlib.contextmanager
    def serving(self) -> Iterator["Receiver"]:
        receiver = self

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    n = sum(1 for path, _ in receiver.started if path == self.path)
                    receiver.started.append((self.path, self.headers["webhook-id"]))
                answer = receiver.behave.get(self.path, _not_found)(n)
                status, wait = answer if isinstance(answer, tuple) else (answer, 0.0)
                time.sleep(wait)
                with receiver.lock:
                    receiver.requests.append((self.path, time.time(), dict(self.headers), body))
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = _Server((HOST, 0), Handle)
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


def _not_found(n: int) -> int:
    return 404


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """A test that fails before it stops its workers kills them (else they poll for ever)."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def start_worker(
    database_url: str, urls: list[str], log: Path, **settings: str
) -> subprocess.Popen[bytes]:
    values = {
        "DATABASE_URL": database_url,
        "WEBHOOK_URLS": ",".join(urls),
        "WEBHOOK_SECRET": SECRET,
        "OUTBOX_POLL_SECONDS": "0.05",
        "OUTBOX_LEASE_SECONDS": "3",
        "OUTBOX_BACKOFF_SECONDS": "0.1",
        "WEBHOOK_TIMEOUT_SECONDS": "1",
        "WEBHOOK_CONNECT_TIMEOUT_SECONDS": "1",
        "LOG_FORMAT": "json",
    }
    if VIA_PGBOUNCER:
        values["DB_PREPARE_THRESHOLD"] = "none"
    env = settings_free_environ(**(values | settings))
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _started.append(process)
    return process


def wait_for(condition: Callable[[], bool], timeout: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], log: Path) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(log.read_text()[-3000:]) from None


def pending(outbox: Outbox) -> int:
    return outbox.stats().pending


def make_changes(client: TestClient, n: int) -> set[str]:
    """``n`` changes (a user, its items; from 5 on, an update and a delete among them); the
    ids of every event in the table."""
    user = create_user(client, f"u{n}-{time.monotonic_ns()}@example.com")["id"]
    items = [
        create_item(client, user, title=f"item {i}")["id"] for i in range(n - 1 - 2 * (n >= 5))
    ]
    if n >= 5:
        assert client.patch(f"/items/{items[0]}", json={"title": "changed"}).status_code == 200
        assert client.delete(f"/items/{items[1]}").status_code == 200
    return {event.id for event in events()}


@pytest.mark.pgbouncer
def test_two_workers_deliver_every_event_exactly_once_signed_then_exit_0_on_sigterm(
    client: TestClient, database_url: str, schema: Engine, tmp_path: Path
) -> None:
    expected = make_changes(client, 60)
    outbox = Outbox(schema)
    log = tmp_path / "worker.log"
    with Receiver({"/hook": lambda n: 200}).serving() as receiver:
        url = receiver.url("/hook")
        workers = [start_worker(database_url, [url], log, OUTBOX_BATCH_SIZE="5") for _ in "ab"]
        wait_for(lambda: pending(outbox) == 0, what="every event delivered")
        assert [stop(worker, log) for worker in workers] == [0, 0]
    ids = receiver.ids("/hook")
    assert sorted(ids) == sorted(expected)  # each exactly once, across the two workers
    types = {json.loads(body)["type"] for _, _, _, body in receiver.requests}
    assert types == {"user.created", "item.created", "item.updated", "item.deleted"}
    verifier = Webhook(SECRET)
    for _, _, headers, body in receiver.requests:
        assert verifier.verify(body, headers)["type"] in TYPES
        assert headers["webhook-signature"].startswith("v1,")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    attempts = [line for line in lines if line.get("event_id")]
    assert sorted(line["event_id"] for line in attempts) == sorted(expected)
    assert {line["outcome"] for line in attempts} == {"delivered"}
    assert SECRET not in log.read_text()


def test_failures_retry_with_backoff_then_dead_per_destination_and_redrive(
    client: TestClient,
    database_url: str,
    schema: Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (event_id,) = make_changes(client, 1)
    outbox = Outbox(schema)
    log = tmp_path / "worker.log"
    behave: dict[str, Callable[[int], int | tuple[int, float]]] = {
        "/ok": lambda n: 204,
        "/flaky": lambda n: 500 if n < 3 else 200,  # fails the 3 allowed attempts, then heals
        "/moved": lambda n: 302,  # never followed
        "/slow": lambda n: (200, 0.6 if n < 3 else 0),  # past WEBHOOK_TIMEOUT_SECONDS
    }
    with Receiver(behave).serving() as receiver:
        urls = [receiver.url(path) for path in behave]
        port = free_port()
        worker = start_worker(
            database_url,
            urls,
            log,
            OUTBOX_MAX_ATTEMPTS="3",
            WEBHOOK_TIMEOUT_SECONDS="0.3",
            OUTBOX_METRICS_PORT=str(port),
        )
        try:
            wait_for(lambda: outbox.stats().dead == 1, what="the event parked as dead")
            scraped = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5).read()
            assert b'outbox_attempts_total{outcome="retried"} 2.0' in scraped
            assert b'outbox_attempts_total{outcome="dead"} 1.0' in scraped
            assert b"outbox_oldest_pending_age_seconds" in scraped
            assert receiver.ids("/ok") == [event_id]  # served once: never again on a retry
            assert receiver.ids("/flaky") == [event_id] * 3
            assert receiver.ids("/moved") == [event_id] * 3
            assert receiver.ids("/redirected") == []
            times = [t for p, t, _, _ in receiver.requests if p == "/flaky"]
            assert times[1] - times[0] >= 0.05  # backoff: 0.1 * [0.5, 1]
            assert times[2] - times[1] >= 0.1  # then 0.2 * [0.5, 1]
            (row,) = events()
            assert row.attempts == 3
            assert row.delivered_at is None
            assert row.last_error is not None
            assert "HTTP 500" in row.last_error
            assert "redirects are not followed" in row.last_error
            assert "no answer within 0.3s" in row.last_error

            assert main(["outbox", "dead"]) == 0
            assert event_id in capsys.readouterr().out
            behave["/moved"] = lambda n: 200
            assert main(["outbox", "redrive", event_id]) == 0
            assert "1 dead events made due again" in capsys.readouterr().out
            wait_for(lambda: count_rows(OutboxEvent, OutboxEvent.delivered_at.is_not(None)) == 1)
        finally:
            assert stop(worker, log) == 0
    assert receiver.ids("/ok") == [event_id]
    assert receiver.ids("/flaky") == [event_id] * 4
    assert receiver.ids("/moved") == [event_id] * 4
    assert outbox.stats().dead == 0
    outcomes = [json.loads(line).get("outcome") for line in log.read_text().splitlines()]
    assert [o for o in outcomes if o] == ["retried", "retried", "dead", "delivered"]


def test_kill_9_loses_no_event_and_sigterm_finishes_the_delivery_in_flight(
    client: TestClient, database_url: str, schema: Engine, tmp_path: Path
) -> None:
    expected = make_changes(client, 12)
    outbox = Outbox(schema)
    log = tmp_path / "worker.log"
    short_lease = {"OUTBOX_LEASE_SECONDS": "1.5", "OUTBOX_BATCH_SIZE": "4"}
    with Receiver({"/hook": lambda n: (200, 0.3)}).serving() as receiver:
        url = receiver.url("/hook")
        doomed = start_worker(database_url, [url], log, **short_lease)
        wait_for(lambda: len(receiver.started) >= 2, what="deliveries under way")
        doomed.kill()  # SIGKILL: its claimed events stay leased until the lease ends
        doomed.wait()
        survivor = start_worker(database_url, [url], log, **short_lease)
        wait_for(lambda: pending(outbox) == 0, what="every event delivered")
        delivered = receiver.ids("/hook")
        assert set(delivered) == expected  # at least once: nothing lost
        assert len(delivered) - len(expected) <= 4  # again: at most the killed one's batch

        # SIGTERM while a delivery is in flight: it completes and is recorded, then exit 0.
        more = make_changes(client, 1) - expected
        wait_for(lambda: bool(more & {i for _, i in receiver.started}), what="a delivery in flight")
        assert stop(survivor, log) == 0
    assert more <= set(receiver.ids("/hook"))
    assert pending(outbox) == 0
    assert count_rows(OutboxEvent, OutboxEvent.delivered_at.is_(None)) == 0
