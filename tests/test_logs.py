"""Log lines: text or JSON (one object per line), uvicorn's included; no secret ever logged."""

import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url

from app.config import Settings
from app.main import app
from app.observability.logs import JsonFormatter, RequestIdFilter, TextFormatter
from app.testing.server import LiveServer
from containers import container
from tests.test_errors import OrphanItemUserService


def record(**extra: object) -> logging.LogRecord:
    made = logging.LogRecord("app.test", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_fields_and_the_extras() -> None:
    line = JsonFormatter().format(record(request_id="r-1", status=200, route="/users/{user_id}"))
    parsed = json.loads(line)
    assert parsed.pop("time").endswith("Z")
    assert parsed.pop("pid") == os.getpid()
    assert parsed == {
        "level": "warning",
        "logger": "app.test",
        "message": "hello you",
        "request_id": "r-1",
        "status": 200,
        "route": "/users/{user_id}",
    }


def test_a_json_line_outside_a_request_and_with_a_traceback_is_one_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        failed = record(exc_info=sys.exc_info())
    RequestIdFilter().filter(failed)
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["request_id"] is None
    assert "ValueError: bad" in parsed["exception"]


def test_a_text_line() -> None:
    plain = record()
    RequestIdFilter().filter(plain)
    assert TextFormatter().format(plain).endswith(" WARNING app.test [-] hello you")
    try:
        raise ValueError("bad")
    except ValueError:
        failed = record(exc_info=sys.exc_info(), request_id="r-2")
    lines = TextFormatter().format(failed).splitlines()
    assert lines[0].endswith(" WARNING app.test [r-2] hello you")
    assert lines[-1] == "ValueError: bad"


CONFIGURED = textwrap.dedent(
    """
    import logging, logging.config, sys
    from app.observability.logs import logging_config
    logging.config.dictConfig(logging_config(
        level=sys.argv[1], log_format=sys.argv[2], access_log=sys.argv[3] == "on"))
    logging.getLogger("app.access").info("an access line")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    logging.getLogger("uvicorn.access").info("uvicorn's own access line")
    logging.getLogger("app").debug("a debug line")
    logging.getLogger("app").warning("a warning")
    """
)


@pytest.mark.parametrize(
    ("level", "access", "expected"),
    [
        ("info", "on", ["an access line", "Application startup complete.", "a warning"]),
        ("info", "off", ["Application startup complete.", "a warning"]),
        ("warning", "on", ["a warning"]),
        ("debug", "off", ["Application startup complete.", "a debug line", "a warning"]),
    ],
)
def test_the_logging_config(level: str, access: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CONFIGURED, level, "json", access],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["message"] for line in lines] == expected


SECRET_PASSWORD = f"pw-{secrets.token_hex(8)}"
TOKEN = f"tok-{secrets.token_hex(8)}"
SECRET_KEY = f"key-{secrets.token_hex(16)}"


def send_secrets(client: httpx2.Client | TestClient) -> list[int]:
    """Requests carrying a password in the body and a token in headers, good and bad; their
    statuses, the login form's (a 404 until there is a ``/token``) left out."""
    auth = {"Authorization": f"Bearer {TOKEN}", "Cookie": f"session={TOKEN}"}
    signup = {"email": "secret@example.com", "password": SECRET_PASSWORD}
    login = {"username": "secret@example.com", "password": SECRET_PASSWORD}
    assert client.post("/token", data=login).status_code in (401, 404, 422)
    return [
        client.post("/users/", json=signup, headers=auth).status_code,
        client.post("/users/", json=signup, headers=auth).status_code,  # 400: taken
        client.post("/users/", json={**signup, "email": "no"}, headers=auth).status_code,
        client.get("/users/1", headers=auth).status_code,
        client.get(f"/users/?token={TOKEN}", headers=auth).status_code,
    ]


def assert_no_secrets(text: str, *more: str) -> None:
    for secret in (SECRET_PASSWORD, TOKEN, SECRET_KEY, "$argon2", *more):
        assert secret not in text, f"{secret[:12]}... reached the log"


@pytest.fixture
def server_password(database_url: str) -> str:
    """The database password in DATABASE_URL (PostgreSQL), which must not be logged either."""
    return make_url(database_url).password or "no-password-on-sqlite"


def test_no_secret_reaches_a_real_servers_log(
    database_url: str, schema: Engine, server_password: str
) -> None:
    schema.dispose()
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET_KEY,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
        "ECHO_SQL": "true",
    }
    with LiveServer(env, serve=True) as server, httpx2.Client(base_url=server.url) as client:
        statuses = send_secrets(client)
    assert statuses == [200, 400, 422, 200, 200]
    log = server.log_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(lines) == len(log.splitlines())  # every line is JSON
    assert sum(line["logger"] == "app.access" for line in lines) >= len(statuses)
    assert any(line["logger"] == "sqlalchemy.engine.Engine" for line in lines)  # SQL was echoed
    assert_no_secrets(log, server_password)


class TestInProcess:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(DATABASE_URL=database_url, ECHO_SQL=True)

    def test_no_secret_reaches_the_log(
        self, schema: Engine, caplog: pytest.LogCaptureFixture, server_password: str
    ) -> None:
        caplog.set_level(logging.DEBUG)
        with TestClient(app, raise_server_exceptions=False) as client:
            assert send_secrets(client) == [200, 400, 422, 200, 200]
            orphan = OrphanItemUserService(container.passwords())
            with container.user_service.override(providers.Object(orphan)):
                signup = {"email": "orphan@example.com", "password": SECRET_PASSWORD}
                assert client.post("/users/", json=signup).status_code == 409
        # What the app logged: the test client's own records (httpx2's) name the URLs it sent.
        formatter = logging.Formatter()
        text = "\n".join(
            formatter.format(r) for r in caplog.records if not r.name.startswith("httpx")
        )
        assert "integrity error" in text  # logged, with its statement
        assert "SQL parameters hidden" in text
        assert_no_secrets(text, server_password, "orphan@example.com")


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[LiveServer]:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", "LOG_FORMAT": "text"}
    with LiveServer(env, serve=True) as server:
        yield server


def test_app_serve_replaces_uvicorns_access_log(sqlite_server: LiveServer) -> None:
    with httpx2.Client(base_url=sqlite_server.url) as client:
        response = client.get("/users/", headers={"X-Request-ID": "text-1"})
    assert response.status_code == 200
    sqlite_server.stop()
    log = sqlite_server.log_text()
    assert '"GET /users/ HTTP/1.1" 200' not in log  # uvicorn's
    access = [line for line in log.splitlines() if " app.access [text-1] " in line]
    assert len(access) == 1
    assert access[0].split(" app.access [text-1] ")[1].startswith("GET /users/ 200 ")
    assert "from 127.0.0.1:" in access[0]
