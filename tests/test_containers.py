"""The composition root: singletons, factories, wiring, disposal, and no import-time I/O."""

import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from dependency_injector.wiring import Provide, inject
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from app.config import Settings
from app.db import engines
from app.lifespan import dispose_engines
from app.testing.plugin import engine_pair, settings_free_environ
from app.testing.processes import free_port
from containers import Container

THREADS = 16


@pytest.fixture
async def fresh(tmp_path: Path) -> AsyncIterator[Container]:
    """A container of its own, configured for a temporary SQLite file."""
    c = Container()
    c.settings.override(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.db'}"))
    yield c
    c.engine.reset_override()
    c.async_engine.reset_override()
    await dispose_engines(c)


@pytest.fixture
async def other_engines(tmp_path: Path) -> AsyncIterator[tuple[Engine, AsyncEngine]]:
    async with engine_pair(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'other.db'}")) as engines:
        yield engines


def test_engine_providers_are_singletons(fresh: Container) -> None:
    assert fresh.engine() is fresh.engine()
    assert fresh.async_engine() is fresh.async_engine()
    assert isinstance(fresh.engine(), Engine)
    assert isinstance(fresh.async_engine(), AsyncEngine)
    assert fresh.engine().url.database == fresh.async_engine().url.database


@pytest.mark.parametrize(
    ("provider", "factory"),
    [("engine", "create_engine"), ("async_engine", "create_async_engine")],
)
def test_first_resolution_from_many_threads_builds_one_engine(
    fresh: Container, monkeypatch: pytest.MonkeyPatch, provider: str, factory: str
) -> None:
    built: list[object] = []
    real = getattr(engines, factory)

    def slow_factory(*args: Any, **kwargs: Any) -> object:
        time.sleep(0.05)  # widen the window in which a second thread could start building
        engine = real(*args, **kwargs)
        built.append(engine)
        return engine

    monkeypatch.setattr(engines, factory, slow_factory)
    singleton = getattr(fresh, provider)
    singleton.reset()
    barrier = threading.Barrier(THREADS)
    results: list[object] = []

    def resolve() -> None:
        barrier.wait(timeout=10)
        results.append(singleton())

    threads = [threading.Thread(target=resolve) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == THREADS
    assert len(built) == 1
    assert all(result is built[0] for result in results)


async def test_session_factories_return_new_sessions_on_the_current_engine(
    fresh: Container, other_engines: tuple[Engine, AsyncEngine]
) -> None:
    first, second = fresh.session(), fresh.session()
    assert isinstance(first, Session)
    assert first is not second
    assert first.get_bind() is fresh.engine()
    async_first, async_second = fresh.async_session(), fresh.async_session()
    assert isinstance(async_first, AsyncSession)
    assert async_first is not async_second
    assert async_first.bind is fresh.async_engine()

    other, other_async = other_engines
    with fresh.engine.override(other), fresh.async_engine.override(other_async):
        assert fresh.session().get_bind() is other
        assert fresh.async_session().bind is other_async
    assert fresh.session().get_bind() is fresh.engine()
    for session in (first, second):
        session.close()
    for async_session in (async_first, async_second):
        await async_session.close()
    await dispose_engines(fresh)


# A service function of this module, wired like the routers are.


@inject
def bound_engine(session: Session = Provide[Container.session]) -> Engine:
    with session:
        assert session.execute(text("SELECT 1")).scalar() == 1
        bind = session.get_bind()
        assert isinstance(bind, Engine)
        return bind


@inject
async def async_bound_engine(
    session: AsyncSession = Provide[Container.async_session],
) -> AsyncEngine:
    async with session:
        assert (await session.execute(text("SELECT 1"))).scalar() == 1
        bind = session.bind
        assert isinstance(bind, AsyncEngine)
        return bind


@pytest.fixture
def wired(fresh: Container) -> Iterator[Container]:
    """This module wired to a container of its own, so unwiring leaves the routers alone."""
    fresh.wire(modules=[sys.modules[__name__]])
    yield fresh
    fresh.unwire()


async def test_wired_functions_follow_overrides(
    wired: Container, other_engines: tuple[Engine, AsyncEngine]
) -> None:
    engine, async_engine = wired.engine(), wired.async_engine()
    assert bound_engine() is engine
    assert await async_bound_engine() is async_engine
    other, other_async = other_engines
    with wired.engine.override(other), wired.async_engine.override(other_async):
        assert bound_engine() is other
        assert await async_bound_engine() is other_async
    assert bound_engine() is engine
    assert await async_bound_engine() is async_engine
    await dispose_engines(wired)


def closes_of(engine: Engine) -> list[object]:
    closed: list[object] = []

    @event.listens_for(engine, "close")
    def record(dbapi_connection: Any, record: Any) -> None:
        closed.append(dbapi_connection)

    return closed


async def test_dispose_engines_disposes_the_containers_own_engines(fresh: Container) -> None:
    engine, async_engine = fresh.engine(), fresh.async_engine()
    closed, async_closed = closes_of(engine), closes_of(async_engine.sync_engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    async with async_engine.connect() as async_conn:
        await async_conn.execute(text("SELECT 1"))
    assert (closed, async_closed) == ([], [])

    await dispose_engines(fresh)

    assert len(closed) == 1
    assert len(async_closed) == 1
    assert fresh.engine() is not engine
    assert fresh.async_engine() is not async_engine
    await dispose_engines(fresh)


async def test_dispose_engines_leaves_overrides_alone(
    fresh: Container, other_engines: tuple[Engine, AsyncEngine]
) -> None:
    other, other_async = other_engines
    closed, async_closed = closes_of(other), closes_of(other_async.sync_engine)
    fresh.engine.override(other)
    fresh.async_engine.override(other_async)
    with other.connect() as conn:
        conn.execute(text("SELECT 1"))
    async with other_async.connect() as async_conn:
        await async_conn.execute(text("SELECT 1"))

    await dispose_engines(fresh)

    assert (closed, async_closed) == ([], [])
    assert isinstance(other.pool, QueuePool)
    assert other.pool.checkedin() == 1
    assert fresh.engine() is other
    assert fresh.async_engine() is other_async


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{tmp}/no-such-folder/app.db",
        "sqlite:///{tmp}/app.db",
        "postgresql://u@{closed}/db",
    ],
)
def test_importing_the_app_opens_no_database(tmp_path: Path, url: str) -> None:
    database_url = url.format(tmp=tmp_path, closed=f"127.0.0.1:{free_port()}")
    code = "import app, app.main, app.database, containers; print(app.main.app.title)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=settings_free_environ(DATABASE_URL=database_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Users and items"
    assert list(tmp_path.iterdir()) == []
