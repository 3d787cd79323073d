"""Request ids on every response and log record, and one access-log line per request."""

import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import request_context
from app.config import Settings
from app.main import app
from app.middleware.telemetry import UNMATCHED, _request_id
from app.observability.logs import RequestIdFilter
from app.schemas import UserRead
from app.services import UserService
from containers import container
from tests.doubles import BlockingReads
from tests.factories import create_user

GENERATED = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("tests.telemetry")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of INFO and up, with ``request_id`` set as ``app serve``'s handler sets it."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    return caplog


@pytest.fixture
def quiet_client(schema: Engine) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


class ExplodingReads(UserService):
    def __init__(self, error: Exception) -> None:
        super().__init__(container.passwords())
        self.error = error

    def get_page(
        self, session: Session, *, skip: int, limit: int, after_id: int | None = None
    ) -> list[UserRead]:
        log.info("reading a page in %s", threading.current_thread().name)
        raise self.error


def test_every_response_carries_a_new_request_id(quiet_client: TestClient) -> None:
    user = create_user(quiet_client)
    responses = [
        quiet_client.get(f"/users/{user['id']}"),
        quiet_client.get("/users/999999"),
        quiet_client.get("/users/?limit=0"),
        quiet_client.delete("/users/"),
        quiet_client.get("/no/such/route"),
    ]
    with container.user_service.override(providers.Object(ExplodingReads(RuntimeError("boom")))):
        responses.append(quiet_client.get("/users/"))
    with container.user_service.override(
        providers.Object(ExplodingReads(OperationalError("SELECT", {}, Exception("gone"))))
    ):
        responses.append(quiet_client.get("/users/"))
    assert [r.status_code for r in responses] == [200, 404, 422, 405, 404, 500, 503]
    ids = [r.headers.get_list("x-request-id") for r in responses]
    assert all(len(found) == 1 and GENERATED.fullmatch(found[0]) for found in ids), ids
    assert len({found[0] for found in ids}) == len(ids)


@pytest.mark.parametrize("incoming", ["abc", "A.b_c-9", "x" * 128, "0" * 32])
def test_a_valid_incoming_id_is_echoed(client: TestClient, incoming: str) -> None:
    response = client.get("/health", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["", "x" * 129, "a b", "a;b", "<script>", "a/b", "ü"])
def test_an_invalid_incoming_id_is_replaced(client: TestClient, incoming: str) -> None:
    response = client.get("/health", headers=[(b"X-Request-ID", incoming.encode())])
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_one_access_line_per_request_with_the_route_template(
    client: TestClient, logs: pytest.LogCaptureFixture
) -> None:
    user = create_user(client, email="alice@example.com")
    logs.clear()
    found = client.get(f"/users/{user['id']}", headers={"X-Request-ID": "req-1"})
    missing = client.get("/users/alice@example.com")
    unmatched = client.get("/alice@example.com/secret")
    assert (found.status_code, missing.status_code, unmatched.status_code) == (200, 422, 404)

    first, second, third = access_lines(logs)
    assert vars(first)["request_id"] == "req-1"
    fields: dict[str, Any] = {k: getattr(first, k) for k in ("method", "route", "status", "client")}
    assert fields == {
        "method": "GET",
        "route": "/users/{user_id}",
        "status": 200,
        "client": "testclient:50000",
    }
    assert vars(first)["duration_ms"] > 0
    assert 0 <= vars(first)["gate_wait_ms"] <= vars(first)["duration_ms"]
    assert first.getMessage().startswith("GET /users/{user_id} 200 ")
    assert (vars(second)["route"], vars(second)["status"]) == ("/users/{user_id}", 422)
    assert (vars(third)["route"], vars(third)["status"]) == (UNMATCHED, 404)
    for line in (first, second, third):  # never the raw path
        assert "alice" not in f"{line.getMessage()} {vars(line)}"


class TestWorkerThreads:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        # SQLite reads run on the event loop by default; here they run in worker threads, as
        # a database server's always do.
        return Settings(DATABASE_URL=database_url, SQLITE_READ_ON_LOOP_MS=0)

    def test_records_from_worker_threads_and_error_handlers_carry_the_request_id(
        self, client: TestClient, logs: pytest.LogCaptureFixture
    ) -> None:
        failing = ExplodingReads(OperationalError("SELECT", {}, Exception("server closed")))
        with container.user_service.override(providers.Object(failing)):
            response = client.get("/users/")
        assert response.status_code == 503
        request_id = response.headers["x-request-id"]

        in_thread = [r for r in logs.records if r.name == "tests.telemetry"]
        handler = [r for r in logs.records if r.getMessage().startswith("database unavailable")]
        assert len(in_thread) == len(handler) == len(access_lines(logs)) == 1
        assert in_thread[0].threadName != threading.main_thread().name
        assert in_thread[0].thread != handler[0].thread  # the unit ran in a worker thread
        for record in (*in_thread, *handler, *access_lines(logs)):
            assert vars(record)["request_id"] == request_id


def test_records_outside_any_request_have_no_request_id(logs: pytest.LogCaptureFixture) -> None:
    log.info("no request here")
    assert request_context.request_id() is None
    assert vars(logs.records[-1])["request_id"] == "-"


class TestGateWait:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        # Reads in threads: the blocking read below would hold the event loop otherwise.
        return Settings(
            DATABASE_URL=database_url,
            DB_POOL_SIZE=1,
            DB_MAX_OVERFLOW=0,
            DB_QUEUE_TIMEOUT=0.3,
            SQLITE_READ_ON_LOOP_MS=0,
        )

    def test_the_access_line_shows_the_time_waited_at_the_gate(
        self, client: TestClient, logs: pytest.LogCaptureFixture
    ) -> None:
        blocking = BlockingReads()
        with container.user_service.override(providers.Object(blocking)):
            holder = threading.Thread(target=lambda: client.get("/users/"))
            holder.start()
            assert blocking.entered.wait(timeout=30)
            response = client.get("/items/")
            blocking.release.set()
            holder.join(timeout=30)
        assert response.status_code == 503
        timed_out = next(r for r in access_lines(logs) if vars(r)["route"] == "/items/")
        assert vars(timed_out)["status"] == 503
        assert vars(timed_out)["gate_wait_ms"] >= 290  # DB_QUEUE_TIMEOUT
        assert vars(timed_out)["request_id"] == response.headers["x-request-id"]


def test_generated_ids_are_new_every_time() -> None:
    scope = {"headers": [(b"x-request-id", b"no spaces allowed")]}
    ids = {_request_id(scope) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(GENERATED.fullmatch(found) for found in ids)
