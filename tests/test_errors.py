"""Errors: 503 for an unusable database, 500 without internals, no half-committed request."""

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.exceptions import DatabaseBusyError
from app.main import app
from app.models import Item, User
from app.schemas import ItemCreate, ItemRead, UserCreate, UserRead
from app.services import ItemService, UserService
from app.testing import routes
from app.testing.plugin import count_rows
from app.testing.processes import free_port
from containers import container
from tests.conftest import UNAVAILABLE
from tests.doubles import BlockingReads

SECRET = "s3cret-pa55word"

DATABASE_FREE = {"/health/live"}
"""Routes that answer without the database (tests/test_health.py checks them)."""
REQUESTS = [
    pytest.param(r, id=f"{r.method} {r.template}")
    for r in routes.example_requests(app)
    if r.template not in DATABASE_FREE
]


def assert_no_internals(text: str) -> None:
    for leak in ("Traceback", "sqlalchemy", "sqlite", "psycopg", SECRET, "boom"):
        assert leak not in text


@pytest.fixture
def quiet_client(schema: Engine) -> Iterator[TestClient]:
    """A client that answers like a real server instead of re-raising server errors."""
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def unreachable_sqlite(tmp_path: Path) -> tuple[Engine, AsyncEngine]:
    path = tmp_path / "no-such-folder" / "app.db"
    return create_engine(f"sqlite:///{path}"), create_async_engine(f"sqlite+aiosqlite:///{path}")


def closed_postgresql_port(tmp_path: Path) -> tuple[Engine, AsyncEngine]:
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{free_port()}/app"
    options: dict[str, Any] = {"connect_args": {"connect_timeout": 3}}
    return create_engine(url, **options), create_async_engine(url, **options)


@pytest.fixture(params=[unreachable_sqlite, closed_postgresql_port])
async def unreachable(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Engine, AsyncEngine]]:
    build: Callable[[Path], tuple[Engine, AsyncEngine]] = request.param
    engine, async_engine = build(tmp_path)
    yield engine, async_engine
    await async_engine.dispose()
    engine.dispose()


@pytest.mark.pgbouncer
@pytest.mark.parametrize("request_", REQUESTS)
def test_an_unreachable_database_is_503_with_retry_after(
    client: TestClient,
    unreachable: tuple[Engine, AsyncEngine],
    request_: routes.ExampleRequest,
) -> None:
    engine, async_engine = unreachable
    with container.engine.override(engine), container.async_engine.override(async_engine):
        response = request_.send(client)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.json() == UNAVAILABLE
    assert int(response.headers["retry-after"]) >= 1
    assert_no_internals(response.text)
    assert client.get("/health").status_code == 200  # the override is gone: healthy again


class FailingUserService(UserService):
    """Fails after the user row was flushed: the transaction must not commit it."""

    def create(self, session: Session, user_in: UserCreate, hashed_password: str) -> UserRead:
        super().create(session, user_in, hashed_password)
        raise RuntimeError("boom after the flush")


class OrphanItemUserService(UserService):
    """Flushes the user, then an item whose owner does not exist: an IntegrityError."""

    def create(self, session: Session, user_in: UserCreate, hashed_password: str) -> UserRead:
        user = super().create(session, user_in, hashed_password)
        session.add(Item(title="orphan", owner_id=user.id + 1000))
        session.flush()
        return user


class FailingItemService(ItemService):
    def create_for_user(
        self, session: Session, user_id: int, item_in: ItemCreate, *, caller_id: int | None
    ) -> ItemRead | None:
        super().create_for_user(session, user_id, item_in, caller_id=caller_id)
        raise RuntimeError("boom after the flush")


@pytest.mark.parametrize(
    ("service", "status", "detail"),
    [
        pytest.param(FailingUserService, 500, "Internal Server Error", id="unexpected-500"),
        pytest.param(
            OrphanItemUserService, 409, "Request conflicts with existing data", id="integrity-409"
        ),
    ],
)
def test_a_failed_registration_is_clean_json_and_commits_nothing(
    quiet_client: TestClient, service: type[UserService], status: int, detail: str
) -> None:
    with container.user_service.override(providers.Object(service(container.passwords()))):
        response = quiet_client.post(
            "/users/", json={"email": "alice@example.com", "password": SECRET}
        )
    assert response.status_code == status
    assert response.json() == {"detail": detail}
    assert_no_internals(response.text)
    assert (count_rows(User), count_rows(Item)) == (0, 0)


def test_a_failed_item_write_commits_nothing(quiet_client: TestClient) -> None:
    owner = quiet_client.post("/users/", json={"email": "a@example.com", "password": "x"}).json()
    with container.item_service.override(providers.Object(FailingItemService())):
        response = quiet_client.post(f"/users/{owner['id']}/items/", json={"title": "Pen"})
    assert response.status_code == 500
    assert count_rows(Item) == 0
    assert (
        quiet_client.post(f"/users/{owner['id']}/items/", json={"title": "Pen"}).json()["title"]
        == "Pen"
    )
    assert count_rows(Item) == 1


class RaisingReads(UserService):
    def __init__(self, error: Exception) -> None:
        super().__init__(container.passwords())
        self.error = error

    def get_page(
        self, session: Session, *, skip: int, limit: int, after_id: int | None = None
    ) -> list[UserRead]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OperationalError("SELECT", {}, Exception("database is locked")), 503),
        (InterfaceError("SELECT", {}, Exception("connection already closed")), 503),
        (InternalError("COMMIT", {}, Exception("received 2 results from command 'COMMIT'")), 503),
        (PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"), 503),
        (DisconnectionError("server closed the connection"), 503),
        (DatabaseBusyError("no database connection free within 5s"), 503),
        (IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")), 409),
        (RuntimeError("boom"), 500),
        (KeyError("boom"), 500),
    ],
)
def test_the_exception_mapping(quiet_client: TestClient, error: Exception, status: int) -> None:
    with container.user_service.override(providers.Object(RaisingReads(error))):
        response = quiet_client.get("/users/")
    assert response.status_code == status
    assert set(response.json()) == {"detail"}
    assert isinstance(response.json()["detail"], str)
    assert ("retry-after" in response.headers) == (status == 503)
    assert_no_internals(response.text)


class TestBusyGate:
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

    def test_a_request_that_waits_too_long_for_a_connection_is_503(
        self, client: TestClient
    ) -> None:
        blocking = BlockingReads()
        statuses: list[int] = []

        def hold() -> None:
            statuses.append(client.get("/users/").status_code)

        with container.user_service.override(providers.Object(blocking)):
            holder = threading.Thread(target=hold)
            holder.start()
            assert blocking.entered.wait(timeout=30)
            started = time.monotonic()
            response = client.get("/items/")
            waited = time.monotonic() - started
            blocking.release.set()
            holder.join(timeout=30)
        assert response.status_code == 503
        assert response.json() == UNAVAILABLE
        assert response.headers["retry-after"] == "1"
        assert 0.3 <= waited < 10
        assert statuses == [200]
        assert client.get("/items/").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/users/1", "DELETE, GET, HEAD, PATCH"),
        ("PUT", "/users/", "GET, HEAD, POST"),
        ("POST", "/items/7", "DELETE, GET, HEAD, PATCH"),
        ("DELETE", "/health", "GET, HEAD"),
    ],
)
def test_a_405_lists_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == allow
