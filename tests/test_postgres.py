"""PostgreSQL: psycopg engines from one URL, pool settings, no SQLite pragmas, outages, secrets.

Tests marked ``needs_server`` run against ``TEST_DATABASE_URL``
(``python scripts/with_postgres.py .venv/bin/pytest``); the others need no server.
"""

import asyncio
import logging
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import psycopg
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, func, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from app.config import Settings
from app.database import AsyncSessionLocal, Base, ensure_database_schema
from app.db.engines import build_async_engine, build_engine
from app.main import app
from app.models import Item, User
from app.testing.plugin import BACKEND, count_rows, engine_pair
from app.testing.server import LiveServer
from containers import Container, container
from tests.conftest import UNAVAILABLE, run_app
from tests.load import Connection, register_at_once

needs_server = pytest.mark.skipif(
    BACKEND != "postgresql",
    reason="needs a PostgreSQL server in TEST_DATABASE_URL: "
    "python scripts/with_postgres.py .venv/bin/pytest",
)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


@needs_server
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
async def test_one_url_gives_sync_and_async_psycopg_engines(database_url: str, scheme: str) -> None:
    url = make_url(database_url).set(drivername=scheme).render_as_string(hide_password=False)
    async with engine_pair(Settings(DATABASE_URL=url)) as (engine, async_engine):
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
        assert (async_engine.dialect.name, async_engine.dialect.driver) == ("postgresql", "psycopg")
        assert (engine.dialect.is_async, async_engine.dialect.is_async) == (False, True)
        database = make_url(database_url).database
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT current_database()")) == database
        async with async_engine.connect() as aconn:
            assert await aconn.scalar(text("SELECT current_database()")) == database


@pytest.mark.parametrize(
    "knobs",
    [
        {"DB_POOL_SIZE": 5, "DB_MAX_OVERFLOW": 10, "DB_POOL_PRE_PING": True,
         "DB_POOL_RECYCLE": 1800, "DB_QUEUE_TIMEOUT": 5.0},
        {"DB_POOL_SIZE": 3, "DB_MAX_OVERFLOW": 0, "DB_POOL_PRE_PING": False,
         "DB_POOL_RECYCLE": -1, "DB_QUEUE_TIMEOUT": 0.5},
    ],
)  # fmt: skip
async def test_pool_settings_reach_both_engines(knobs: dict[str, Any]) -> None:
    s = Settings(DATABASE_URL="postgresql://app:pw@127.0.0.1:5432/app", **knobs)
    fresh = Container()
    fresh.settings.override(providers.Object(s))
    engine: Engine = fresh.engine()
    async_engine: AsyncEngine = fresh.async_engine()
    try:
        for pool in (engine.pool, async_engine.pool):
            assert isinstance(pool, QueuePool)
            assert pool.size() == knobs["DB_POOL_SIZE"]
            assert pool._max_overflow == knobs["DB_MAX_OVERFLOW"]
            assert pool._pre_ping is knobs["DB_POOL_PRE_PING"]
            assert pool._recycle == knobs["DB_POOL_RECYCLE"]
            assert pool._timeout == knobs["DB_QUEUE_TIMEOUT"]
    finally:
        await async_engine.dispose()
        engine.dispose()


def test_the_default_pool_settings() -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults["DB_POOL_SIZE"] == 5
    assert defaults["DB_MAX_OVERFLOW"] == 10
    assert defaults["DB_POOL_PRE_PING"] is True
    assert 0 < defaults["DB_POOL_RECYCLE"] <= 3600


class _Recorder:
    """Every statement that reaches a psycopg cursor, and every set of connect() arguments."""

    statements: ClassVar[list[str]] = []
    connect_args: ClassVar[list[set[str]]] = []

    @classmethod
    def record(cls, query: Any) -> None:
        cls.statements.append(query.decode() if isinstance(query, bytes) else str(query))


class _RecordingCursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        _Recorder.record(query)
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        _Recorder.record(query)
        super().executemany(query, params_seq, **kwargs)


class _RecordingAsyncCursor(psycopg.AsyncCursor[Any]):
    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        _Recorder.record(query)
        return await super().execute(query, params, **kwargs)

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        _Recorder.record(query)
        await super().executemany(query, params_seq, **kwargs)


def _record_connections(
    engine: Engine, cursor: type[psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]]
) -> None:
    # Added after any hook the engine was built with: those have already edited cparams,
    # and their raw-cursor statements go through ``cursor`` too.
    @event.listens_for(engine, "do_connect")
    def _spy(
        dialect: Any, conn_rec: ConnectionPoolEntry, cargs: Any, cparams: dict[str, Any]
    ) -> None:
        _Recorder.connect_args.append(set(cparams))
        cparams["cursor_factory"] = cursor


@needs_server
def test_no_sqlite_pragma_or_begin_mode_reaches_postgresql(
    engines: tuple[Engine, AsyncEngine],
) -> None:
    engine, async_engine = engines
    _Recorder.statements.clear()
    _Recorder.connect_args.clear()
    _record_connections(engine, _RecordingCursor)
    _record_connections(async_engine.sync_engine, _RecordingAsyncCursor)

    ensure_database_schema()
    with TestClient(app) as client:
        user = client.post("/users/", json={"email": "pg@example.com", "password": "pw"})
        assert user.status_code == 200
        assert client.post(f"/users/{user.json()['id']}/items/", json={"title": "x"}).is_success
        assert client.get("/users/").json()[0]["items"][0]["title"] == "x"
        assert client.get("/health").status_code == 200

    async def count_items_async() -> int | None:
        async with AsyncSessionLocal() as session:
            query = select(func.count().label("async_probe")).select_from(Item)
            return await session.scalar(query)

    assert asyncio.run(count_items_async()) == 1

    sql = [s.strip().upper() for s in _Recorder.statements]
    assert any(s.startswith("CREATE TABLE") for s in sql)  # the sync engine was recorded
    assert any("ASYNC_PROBE" in s for s in sql)  # and so was the async one
    assert not [s for s in sql if "PRAGMA" in s or s.startswith("BEGIN")]
    assert len(_Recorder.connect_args) >= 2
    for args in _Recorder.connect_args:
        assert not args & {"check_same_thread", "timeout", "isolation_level"}


@needs_server
def test_health_is_200_on_postgresql(client: TestClient) -> None:
    assert container.engine().dialect.name == "postgresql"
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.fixture
async def unreachable_server(closed_port: int) -> AsyncIterator[tuple[Engine, AsyncEngine]]:
    """The container's own engines for a PostgreSQL URL whose port refuses connections."""
    s = Settings(DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{closed_port}/app")
    async with engine_pair(s) as engines:
        yield engines


def test_health_is_503_when_the_server_is_unreachable(
    client: TestClient, unreachable_server: tuple[Engine, AsyncEngine]
) -> None:
    engine, async_engine = unreachable_server
    with container.engine.override(engine), container.async_engine.override(async_engine):
        health = client.get("/health")
        write = client.post("/users/", json={"email": "down@example.com", "password": "pw"})
    for response in (health, write):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json() == UNAVAILABLE
    assert client.get("/health").status_code == 200


@pytest.fixture
async def wrong_password(database_url: str) -> AsyncIterator[tuple[str, Engine, AsyncEngine]]:
    """Engines for this test's database, with a password the server rejects."""
    password = f"wrong-{secrets.token_hex(8)}"
    s = Settings(DATABASE_URL=with_password(database_url, password))
    async with engine_pair(s) as (engine, async_engine):
        yield password, engine, async_engine


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[Engine, AsyncEngine]]:
    """Engines for a server that completes the TCP handshake and then never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # never accepted: the kernel queues the connections, nobody answers
        port = listener.getsockname()[1]
        s = Settings(DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{port}/app", DB_QUEUE_TIMEOUT=1)
        engine, async_engine = build_engine(s), build_async_engine(s)
        yield engine, async_engine
    # Closing the listener has reset any connection still waiting, so disposing cannot hang.
    await async_engine.dispose()
    engine.dispose()


def test_a_server_that_never_answers_is_503_within_the_connect_timeout(
    client: TestClient, silent_server: tuple[Engine, AsyncEngine]
) -> None:
    engine, async_engine = silent_server
    responses: list[tuple[float, int]] = []

    def call() -> None:
        with container.engine.override(engine), container.async_engine.override(async_engine):
            for method, path, body in [
                ("GET", "/health", None),
                ("POST", "/users/", {"email": "silent@example.com", "password": "pw"}),
            ]:
                start = time.monotonic()
                response = client.request(method, path, json=body)
                responses.append((time.monotonic() - start, response.status_code))

    # In a thread, so that a hang fails the test instead of blocking it forever.
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "a request waited for the silent server for over a minute"
    assert [status for _, status in responses] == [503, 503]
    # libpq's connect_timeout (2 s at least) stops the wait, not the operating system.
    assert all(seconds < 30 for seconds, _ in responses), responses


@needs_server
def test_a_wrong_password_is_503_and_never_echoed(
    client: TestClient,
    wrong_password: tuple[str, Engine, AsyncEngine],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password, engine, async_engine = wrong_password
    caplog.set_level(logging.INFO)
    with container.engine.override(engine), container.async_engine.override(async_engine):
        responses = [
            client.get("/health"),
            client.get("/users/"),
            client.post("/users/", json={"email": "who@example.com", "password": "pw"}),
        ]
    for response in responses:
        assert response.status_code == 503
        assert response.json() == UNAVAILABLE
        assert password not in response.text
        assert password not in str(response.headers)
    assert "password authentication failed" in caplog.text  # the server did refuse it
    assert password not in caplog.text

    url = engine.url.render_as_string(hide_password=False)
    result = run_app("init-db", env={"DATABASE_URL": url}, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert password not in result.stdout + result.stderr


def test_init_db_against_an_unreachable_server_is_one_clear_line(
    tmp_path: Path, closed_port: int
) -> None:
    password = f"secret-{secrets.token_hex(8)}"
    url = f"postgresql://app:{password}@127.0.0.1:{closed_port}/app"
    result = run_app("init-db", env={"DATABASE_URL": url}, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"app: cannot create the schema on postgresql://app:***@127.0.0.1:{closed_port}/app: "
    )
    assert lines[0].endswith("Connection refused")
    assert password not in result.stderr


async def _race(urls: list[str], email: str) -> list[int]:
    """One client per URL registers ``email`` at the same moment."""
    connections = [Connection(url, timeout=30) for url in urls]
    try:
        responses = await register_at_once(connections, email)
    finally:
        for c in connections:
            c.close()
    return [r.status for r in responses]


@needs_server
def test_same_email_race_across_two_app_instances(database_url: str, schema: Engine) -> None:
    """Two servers sharing one database: PostgreSQL's unique index picks exactly one winner."""
    env = {"DATABASE_URL": database_url, "CREATE_SCHEMA": "false"}
    with LiveServer(env) as first, LiveServer(env) as second:
        for round_ in range(2):
            statuses = asyncio.run(_race([first.url, second.url] * 4, f"race-{round_}@example.com"))
            assert Counter(statuses) == {200: 1, 400: 7}, statuses
        for server in (first, second):
            assert "Traceback" not in server.log_text()
    assert count_rows(User) == 2


@needs_server
def test_concurrent_schema_creation_is_queued(engine: Engine) -> None:
    """Workers starting together with CREATE_SCHEMA=true each find or create the tables."""
    creators = 6
    barrier = threading.Barrier(creators)
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait(timeout=30)
        try:
            ensure_database_schema()
        except BaseException as error:
            errors.append(error)

    for _ in range(5):
        Base.metadata.drop_all(engine)
        threads = [threading.Thread(target=create) for _ in range(creators)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
    assert count_rows(User) == 0
