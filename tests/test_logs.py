"""Log lines: text or JSON (one object per line), uvicorn's included; no secret ever logged."""

import io
import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url

from app import request_context
from app.config import Settings
from app.main import app
from app.observability import logs
from app.observability.logs import (
    AccessHandler,
    JsonFormatter,
    LineHandler,
    LineWriter,
    RequestIdFilter,
    TextFormatter,
)
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


class TestAccessLines:
    """The access line the telemetry middleware writes directly, without a ``LogRecord``, is
    the one ``logging`` would make."""

    @pytest.mark.parametrize("traced", [False, True])
    @pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
    def test_the_direct_line_is_the_logged_one(
        self, formatter: type[logging.Formatter], traced: bool
    ) -> None:
        direct, logged = io.StringIO(), io.StringIO()
        request = request_context.RequestContext("req-1")
        if traced:
            request.trace_id, request.span_id = (
                "0af7651916cd43dd8448eb211c80319c",
                "b7ad6b7169203331",
            )
        fields = ("GET", "/users/{user_id}", 200, 12.35, 0.02, '127.0.0.1:5"\\')
        handler = AccessHandler(direct)
        handler.setFormatter(formatter())
        assert handler.access(*fields, request)
        handler.flush()

        via_logging = LineHandler(logged)
        via_logging.setFormatter(formatter())
        via_logging.addFilter(RequestIdFilter())
        made = logging.LogRecord(
            "app.access",
            logging.INFO,
            __file__,
            1,
            "%s %s %d %.1f ms (gates %.1f ms) from %s",
            fields,
            None,
        )
        made.__dict__.update(zip(EXTRA, fields, strict=True))
        token = request_context._current.set(request)
        try:
            via_logging.handle(made)
        finally:
            request_context._current.reset(token)

        def without_time(line: str) -> str:
            return line.split(" ", 1)[1] if formatter is TextFormatter else line.split(",", 1)[1]

        assert without_time(direct.getvalue()) == without_time(logged.getvalue())
        assert direct.getvalue().count("\n") == 1
        if formatter is JsonFormatter:
            parsed = json.loads(direct.getvalue())
            assert parsed["client"] == fields[-1]
            assert ("trace_id" in parsed) is traced

    def test_another_formatter_is_left_to_logging(self) -> None:
        handler = AccessHandler(io.StringIO())
        handler.setFormatter(logging.Formatter())
        request = request_context.RequestContext("req-1")
        assert not handler.access("GET", "/", 200, 1.0, 0.0, "-", request)

    def test_only_an_access_handler_alone_is_written_to_directly(self) -> None:
        logger = logging.getLogger("tests.logs.access")
        handler = AccessHandler(io.StringIO())
        logger.addHandler(handler)
        try:
            assert logs.access_handler(logger) is None  # propagates: a capture may see it
            logger.propagate = False
            assert logs.access_handler(logger) is handler
            logger.addFilter(RequestIdFilter())
            assert logs.access_handler(logger) is None
        finally:
            logger.removeHandler(handler)
            logger.filters.clear()
            logger.propagate = True


EXTRA = ("method", "route", "status", "duration_ms", "gate_wait_ms", "client")


class TestLineWriter:
    def test_batched_lines_come_before_the_next_line_written_at_once(self) -> None:
        stream = io.StringIO()
        writer = LineWriter(stream, seconds=3600)
        writer.write("a\n")
        writer.write("b\n")
        assert stream.getvalue() == ""
        writer.write_now("c\n")
        assert stream.getvalue() == "a\nb\nc\n"
        writer.write("d\n")
        writer.flush()
        assert stream.getvalue() == "a\nb\nc\nd\n"

    def test_a_full_batch_is_written(self) -> None:
        stream = io.StringIO()
        writer = LineWriter(stream, seconds=3600, chars=10)
        writer.write("12345\n")
        assert stream.getvalue() == ""
        writer.write("6789\n")
        assert stream.getvalue() == "12345\n6789\n"

    def test_batched_lines_are_written_in_the_background(self) -> None:
        stream = io.StringIO()
        writer = LineWriter(stream, seconds=0.01)
        for _ in range(3):
            writer.write("a line\n")
            deadline = time.monotonic() + 30
            while stream.getvalue().count("\n") < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stream.getvalue() == "a line\n"
            stream.seek(0)
            stream.truncate()

    def test_handlers_of_one_stream_share_its_writer(self) -> None:
        stream = io.StringIO()
        assert LineHandler(stream).writer is AccessHandler(stream).writer
        assert LineHandler(io.StringIO()).writer is not LineHandler(stream).writer


def test_no_access_line_is_lost_at_a_graceful_shutdown(tmp_path: Path) -> None:
    """Batched access lines are written before the workers exit (SIGTERM)."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", "LOG_FORMAT": "json"}
    with LiveServer(env, workers=2, serve=True) as server:
        with httpx2.Client(base_url=server.url) as client:
            ids = [
                client.get("/health", headers={"X-Request-ID": f"shutdown-{n}"}).headers[
                    "x-request-id"
                ]
                for n in range(50)
            ]
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    logged = [line["request_id"] for line in lines if line["logger"] == "app.access"]
    assert sorted(i for i in logged if i.startswith("shutdown-")) == sorted(ids)
