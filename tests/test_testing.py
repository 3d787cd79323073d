"""app.testing: the live-server helper and the fixtures that tests rely on."""

import http.client
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.db.sqlite import BEGIN_MODE
from app.models import Item, User
from app.testing.processes import proc_stat_fields
from app.testing.server import LiveServer, LiveServerError
from tests.factories import new_user


def get(server: LiveServer, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def alive(pid: int) -> bool:
    try:
        return proc_stat_fields(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_serve_and_stop_with_the_server(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}"}
    with LiveServer(env, workers=2) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert get(server, "/users/") == (200, b"[]")
        workers = server.worker_pids()
        assert len(workers) == 2
        assert server.pid not in workers
        assert all(alive(pid) for pid in [server.pid, *workers])
        assert server.log_text().count("Application startup complete.") == 2
    assert not server.is_running()
    assert not any(alive(pid) for pid in [server.pid, *workers])
    assert "GET /users/ HTTP/1.1" in server.log_text()
    assert server.stop() == server.stop()


def test_a_single_worker_is_the_server_itself(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = LiveServer({"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}"}, log_path=log)
    try:
        assert server.worker_pids() == [server.pid]
        assert get(server, "/health")[0] == 200
    finally:
        server.stop()
    assert not alive(server.pid)
    assert "Application shutdown complete." in log.read_text()


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(LiveServerError, match="no-such-folder"):
        LiveServer({"DATABASE_URL": f"sqlite:///{missing}/app.db"}, startup_timeout=60)


def test_db_session_rolls_back_what_the_test_and_the_app_committed(
    db_session: Session, client: TestClient, engine: Engine
) -> None:
    db_session.add(new_user("direct@example.com"))
    db_session.commit()
    created = client.post("/users/", json={"email": "http@example.com", "password": "pw"})
    assert created.status_code == 200, created.text
    user_id = created.json()["id"]
    assert client.post(f"/users/{user_id}/items/", json={"title": "t"}).status_code == 200
    assert [u["email"] for u in client.get("/users/").json()] == [
        "direct@example.com",
        "http@example.com",
    ]
    assert db_session.scalar(select(func.count(Item.id))) == 1
    # Nothing reached the database: another connection sees none of it.
    with engine.connect().execution_options(**{BEGIN_MODE: "DEFERRED"}) as other:
        assert other.scalar(select(func.count(User.id))) == 0
