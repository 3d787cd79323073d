"""GET /health: 200 when the database answers, 503 when it does not or the process drains;
GET /health/live: 200 while the process serves."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from app.main import app
from app.runtime import runtime_of
from containers import container
from tests.conftest import UNAVAILABLE

pytestmark = pytest.mark.pgbouncer


def test_health_is_ok(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_is_503_when_the_database_is_unreachable(client: TestClient, tmp_path: Path) -> None:
    unreachable = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'app.db'}")
    with container.engine.override(unreachable):
        response = client.get("/health")
    unreachable.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == UNAVAILABLE
    assert client.get("/health").json() == {"status": "ok"}


def test_health_needs_no_schema(client: TestClient, tmp_path: Path) -> None:
    empty = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with container.engine.override(empty):
        assert client.get("/health").status_code == 200
    empty.dispose()


def test_liveness_needs_no_database(client: TestClient, tmp_path: Path) -> None:
    unreachable = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'app.db'}")
    with container.engine.override(unreachable):
        assert client.get("/health").status_code == 503
        response = client.get("/health/live")
    unreachable.dispose()
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_a_draining_process_is_not_ready_but_alive_and_serving(client: TestClient) -> None:
    runtime_of(client.app).draining = True
    try:
        health = client.get("/health")
        live = client.get("/health/live")
        users = client.get("/users/")
    finally:
        runtime_of(client.app).draining = False
    assert health.status_code == 503
    assert health.json() == {"detail": "Server is shutting down"}
    assert health.headers["retry-after"] == "1"
    assert health.headers["x-request-id"]
    assert (live.status_code, users.status_code) == (200, 200)
    assert client.get("/health").status_code == 200


def test_every_startup_begins_ready(schema: object) -> None:
    for _ in range(2):
        with TestClient(app) as client:
            assert client.get("/health").status_code == 200
            runtime_of(client.app).draining = True
