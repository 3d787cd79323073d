"""pytest fixtures: every test gets a database of its own by overriding the container.

Load it with ``addopts = "-p app.testing.plugin"`` in pytest's configuration (this project's
pyproject.toml does), or ``pytest_plugins = ["app.testing.plugin"]`` in a root ``conftest.py``
that imports nothing from it. It needs pytest-asyncio (its async fixtures are declared for
both its strict and its auto mode).

Tests never see the settings of the process that runs them: ``settings`` is built from the
field defaults plus what the fixture asks for, not from the environment, ``.env`` or
``config.yml`` (``requested_settings(**values)`` builds the same for a test of yours), and
``client`` is an app created for them.

The backend is SQLite (a temporary file) unless ``TEST_DATABASE_URL`` names a PostgreSQL
server (a superuser URL), in which case each test gets a fresh database on it, dropped
afterwards; ``scripts/with_postgres.py`` starts a throwaway server and sets it. When
``TEST_PGBOUNCER_URL`` names a PgBouncer in front of that server as well (``with_postgres.py
--pgbouncer``), the databases are still created on the server, but the app reaches them
through PgBouncer with ``DB_PREPARE_THRESHOLD`` None (in ``settings``, and in the
environment for the run, so that the live servers of every test read it too).
``--backend-tests-only`` keeps the tests that depend on the backend: those using
``database_url`` or ``module_database_url`` (directly or through another fixture) and are not
marked ``any_backend``, and those marked ``backend``.

- ``database_url``: the URL of this test's empty database;
- ``module_database_url``: an empty database shared by the tests of a module (for a live
  server they share);
- ``settings``: ``Settings`` for it; override this fixture to change a knob for a module;
- ``engines`` (``engine``, ``async_engine``): the container's engines for it, overriding
  ``container.settings``, ``container.engine`` and ``container.async_engine`` until the
  test ends, so ``app.database``, ``@inject``-wired code and HTTP requests all use it;
- ``schema``: the same, with the tables created;
- ``client``: a ``TestClient`` of an app created and started on that database;
- ``auth_client``: the same for an app created with ``AUTH_ENABLED`` and a random
  ``SECRET_KEY``; ``bearer(user_id)`` gives the ``Authorization`` header of a valid token;
- ``db_session`` (opt-in): a ``Session`` inside a transaction that is rolled back after the
  test, whatever the test and the app committed (SQLAlchemy's "Joining a Session into an
  External Transaction" recipe); the container hands the app sessions on the same
  connection, so it suits tests that send one request at a time.

Helpers: ``count_rows(Model, *where)``, ``bearer(user_id)``, ``with_auth(settings)``,
``requested_settings(**values)``, ``engine_pair(settings)``. Password hashing runs at a
test-sized Argon2id cost for the whole session.
"""

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from dependency_injector import providers
from fastapi.testclient import TestClient
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy import ColumnElement, Engine, func, make_url, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.auth.credentials import Tokens
from app.config import Settings
from app.database import Base, SessionLocal, ensure_database_schema
from app.db.engines import build_async_engine, build_engine
from app.db.session import AppSession
from app.db.sqlite import BEGIN_MODE
from app.main import create_app
from app.testing.databases import TestDatabases
from containers import container

__all__ = [
    "BACKEND",
    "PGBOUNCER_URL",
    "SERVER_URL",
    "VIA_PGBOUNCER",
    "bearer",
    "count_rows",
    "engine_pair",
    "requested_settings",
    "settings_free_environ",
    "with_auth",
]

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "")
BACKEND = "postgresql" if SERVER_URL.startswith("postgresql") else "sqlite"
PGBOUNCER_URL = os.environ.get("TEST_PGBOUNCER_URL", "")
VIA_PGBOUNCER = BACKEND == "postgresql" and bool(PGBOUNCER_URL)
# Transaction pooling hands each transaction any server connection: statements that psycopg
# prepared on another one would not be found (PgBouncer < 1.22).
_BACKEND_SETTINGS: dict[str, Any] = {"DB_PREPARE_THRESHOLD": None} if VIA_PGBOUNCER else {}


class _Requested(Settings):
    """Settings from the field defaults and the values passed in, and from nothing else."""

    model_config = SettingsConfigDict(env_file=None, yaml_file=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def requested_settings(**values: Any) -> Settings:
    """``Settings`` from the field defaults plus ``values``, validated: never the environment,
    ``.env`` or ``config.yml`` of the process running the tests. Through PgBouncer,
    ``DB_PREPARE_THRESHOLD`` is None unless ``values`` say otherwise."""
    requested = _Requested(**(_BACKEND_SETTINGS | values))
    return Settings.model_construct(requested.model_fields_set, **dict(requested))


@contextlib.asynccontextmanager
async def engine_pair(settings: Settings) -> AsyncIterator[tuple[Engine, AsyncEngine]]:
    """The container's sync and async engines for ``settings``, disposed on exit."""
    engine, async_engine = build_engine(settings), build_async_engine(settings)
    try:
        yield engine, async_engine
    finally:
        await async_engine.dispose()
        engine.dispose()


def count_rows(model: type[Base], *where: ColumnElement[bool]) -> int:
    """Rows of ``model`` matching ``where``, counted through the container's current engine."""
    with SessionLocal() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def with_auth(settings: Settings) -> Settings:
    """``settings`` with ``AUTH_ENABLED`` on and a random ``SECRET_KEY``."""
    key = SecretStr(secrets.token_urlsafe(32))
    return settings.model_copy(update={"AUTH_ENABLED": True, "SECRET_KEY": key})


def bearer(user_id: int) -> dict[str, str]:
    """The ``Authorization`` header of a valid access token for ``user_id``, signed with the
    started app's key."""
    tokens: Tokens = container.tokens()
    return {"Authorization": f"Bearer {tokens.issue(user_id)}"}


def settings_free_environ(**env: str) -> dict[str, str]:
    """This process's environment without any of the app's settings, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    return clean | env


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend-tests-only",
        action="store_true",
        help="run only the tests whose outcome depends on the database backend: those that use "
        "the database_url or module_database_url fixture (directly or through another "
        "fixture) and are not marked any_backend, and those marked backend",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("asyncio"):
        raise pytest.UsageError(
            "app.testing.plugin needs pytest-asyncio (pip install pytest-asyncio); it works in "
            "its strict mode and its auto mode"
        )
    config.addinivalue_line(
        "markers",
        "backend: the test depends on the database backend without using the database_url "
        "fixture (it reads BACKEND or TEST_DATABASE_URL); --backend-tests-only keeps it",
    )
    config.addinivalue_line(
        "markers",
        "any_backend: the test uses a database, but its outcome does not depend on which "
        "(HTTP framing, middleware, documentation); --backend-tests-only drops it",
    )
    if VIA_PGBOUNCER:  # for the live servers the tests start, and Settings() in tests
        os.environ["DB_PREPARE_THRESHOLD"] = "none"


_BACKEND_FIXTURES = frozenset(("database_url", "module_database_url"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("backend_tests_only"):
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        depends = item.get_closest_marker("backend") is not None or (
            not _BACKEND_FIXTURES.isdisjoint(fixtures)
            and item.get_closest_marker("any_backend") is None
        )
        (kept if depends else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header() -> str:
    return f"database backend: {BACKEND}{' through PgBouncer' if VIA_PGBOUNCER else ''}"


@pytest.fixture(autouse=True, scope="session")
def _light_password_hashing() -> Iterator[None]:
    """Real Argon2id at a test-sized cost: the production cost (64 MiB) dominates test time."""
    light = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    with container.password_hasher.override(light):
        yield


@pytest.fixture(scope="session")
def _test_databases() -> Iterator[TestDatabases]:
    """Creates and drops the test databases on the server, one ahead, for the whole run."""
    databases = TestDatabases(SERVER_URL)
    yield databases
    databases.close()


@contextlib.contextmanager
def _new_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        return
    databases: TestDatabases = request.getfixturevalue("_test_databases")
    name = databases.take()
    try:
        via = PGBOUNCER_URL if VIA_PGBOUNCER else SERVER_URL
        yield make_url(via).set(database=name).render_as_string(hide_password=False)
    finally:
        databases.give_back(name)


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database of the selected backend that exists only for this test."""
    with _new_database(request, tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database of the selected backend shared by the tests of one module (for a
    live server that they share); each test's data must not depend on the others'."""
    with _new_database(request, tmp_path_factory) as url:
        yield url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return requested_settings(DATABASE_URL=database_url, DB_QUEUE_TIMEOUT=10)


@pytest_asyncio.fixture(loop_scope="function")
async def engines(settings: Settings) -> AsyncIterator[tuple[Engine, AsyncEngine]]:
    """Point the container at this test's database, and back again afterwards."""
    async with engine_pair(settings) as (engine, async_engine):
        with (
            container.settings.override(settings),
            container.engine.override(engine),
            container.async_engine.override(async_engine),
        ):
            yield engine, async_engine


@pytest.fixture
def engine(engines: tuple[Engine, AsyncEngine]) -> Engine:
    return engines[0]


@pytest.fixture
def async_engine(engines: tuple[Engine, AsyncEngine]) -> AsyncEngine:
    return engines[1]


@pytest.fixture
def schema(engine: Engine) -> Engine:
    ensure_database_schema()
    return engine


@pytest.fixture
def client(schema: Engine) -> Iterator[TestClient]:
    # A new app: app.main.app was built from the settings at import (AUTH_ENABLED, CORS...).
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def auth_client(schema: Engine, settings: Settings) -> Iterator[TestClient]:
    with container.settings.override(with_auth(settings)), TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def db_session(schema: Engine, settings: Settings) -> Iterator[Session]:
    """A session whose work, and the app's, is rolled back when the test ends."""
    # DEFERRED on SQLite: the outer transaction takes the write lock only once something
    # writes, and the app started during the test leaves the schema alone.
    with schema.connect().execution_options(**{BEGIN_MODE: "DEFERRED"}) as connection:
        outer = connection.begin()
        sessions = providers.Factory(
            AppSession,
            bind=connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
        )
        try:
            with (
                container.settings.override(settings.model_copy(update={"CREATE_SCHEMA": False})),
                container.session.override(sessions),
                sessions() as session,
            ):
                yield session
        finally:
            outer.rollback()
