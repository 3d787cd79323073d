"""GET /health: 200 when the database answers, 503 when it does not."""

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from containers import container
from tests.conftest import UNAVAILABLE


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
