"""app.database: its documented API, overrides, transactions and the SQLite invariants."""

import doctest
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers
from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

import app.database
from app.config import Settings
from app.database import AsyncSessionLocal, SessionLocal, ensure_database_schema
from app.db.engines import build_async_engine, build_engine
from app.db.sqlite import BEGIN_MODE
from app.models import User
from app.testing.plugin import count_rows, engine_pair
from containers import container
from tests.factories import new_user

BUSY_TIMEOUT_MS = 1234
SYNCHRONOUS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}


def sqlite_settings(path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": f"sqlite:///{path}",
        "SQLITE_BUSY_TIMEOUT_MS": BUSY_TIMEOUT_MS,
        "SQLITE_SYNCHRONOUS": "FULL",
        "DB_POOL_SIZE": 3,
        "DB_MAX_OVERFLOW": 2,
    }
    return Settings(**(values | overrides))


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite engine built by the container's factory, whatever the test backend."""
    engine = build_engine(sqlite_settings(tmp_path / "sqlite.db"))
    yield engine
    engine.dispose()


@pytest.fixture
async def sqlite_async_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = build_async_engine(sqlite_settings(tmp_path / "sqlite.db"))
    yield engine
    await engine.dispose()


def emails(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(select(User.email)))


# The documented examples


def test_module_docstring_examples_run_verbatim(engine: Engine) -> None:
    result = doctest.testmod(app.database, raise_on_error=False, report=False)
    assert result.attempted >= 6
    assert result.failed == 0
    assert set(inspect(engine).get_table_names()) >= {"users", "items"}


# SQLite invariants, applied at connect time


def pragmas(conn: Connection) -> dict[str, Any]:
    return {
        name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
        for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
    }


EXPECTED_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": BUSY_TIMEOUT_MS,
    "foreign_keys": 1,
    "synchronous": SYNCHRONOUS["FULL"],
}


def test_pragmas_on_every_pooled_sync_connection(sqlite_engine: Engine) -> None:
    capacity = 3 + 2  # pool size + overflow: every connection the pool can hold at once
    with ExitStack() as stack:
        connections = [
            # Deferred: reading the pragmas must not queue for the write lock.
            stack.enter_context(sqlite_engine.connect()).execution_options(
                **{BEGIN_MODE: "DEFERRED"}
            )
            for _ in range(capacity)
        ]
        raw = {id(c.connection.dbapi_connection) for c in connections}
        assert len(raw) == capacity
        for conn in connections:
            assert pragmas(conn) == EXPECTED_PRAGMAS


async def test_pragmas_on_async_connections(sqlite_async_engine: AsyncEngine) -> None:
    for _ in range(2):  # a fresh connection after dispose gets them again
        async with sqlite_async_engine.connect() as conn:
            assert await conn.run_sync(pragmas) == EXPECTED_PRAGMAS
        await sqlite_async_engine.dispose()


def test_busy_timeout_follows_the_setting(tmp_path: Path) -> None:
    engine = build_engine(
        sqlite_settings(tmp_path / "x.db", SQLITE_BUSY_TIMEOUT_MS=250, SQLITE_SYNCHRONOUS="OFF")
    )
    with engine.connect() as conn:
        assert pragmas(conn)["busy_timeout"] == 250
        assert pragmas(conn)["synchronous"] == SYNCHRONOUS["OFF"]
    engine.dispose()


def use_from_another_thread(dbapi_connection: Any) -> list[Any]:
    results: list[Any] = []

    def work() -> None:
        try:
            results.append(dbapi_connection.execute("SELECT 41 + 1").fetchone()[0])
        except Exception as error:  # the assertion below reports it
            results.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=10)
    return results


def test_sync_connections_may_cross_threads(sqlite_engine: Engine) -> None:
    raw = sqlite_engine.raw_connection()
    try:
        assert use_from_another_thread(raw.driver_connection) == [42]
    finally:
        raw.close()


async def test_async_connections_may_cross_threads(sqlite_async_engine: AsyncEngine) -> None:
    async with sqlite_async_engine.connect() as conn:
        raw = await conn.get_raw_connection()
        # aiosqlite opened its sqlite3 connection in its own worker thread.
        sqlite3_connection = raw.driver_connection._conn  # type: ignore[union-attr]
        assert use_from_another_thread(sqlite3_connection) == [42]


def statements_of(engine: Engine) -> list[str]:
    """Every statement SQLite runs on ``engine``'s connections, as sqlite3's trace callback
    sees them (app.db.sqlite sends BEGIN on the DBAPI cursor, past SQLAlchemy's events)."""
    seen: list[str] = []

    @event.listens_for(engine, "checkout")
    def trace(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        dbapi_connection.set_trace_callback(seen.append)

    return seen


def test_transactions_begin_immediate_by_default(sqlite_engine: Engine) -> None:
    seen = statements_of(sqlite_engine)
    with Session(sqlite_engine) as session:
        session.execute(text("SELECT 1"))
    assert seen[0] == "BEGIN IMMEDIATE"


def test_deferred_begin_with_the_execution_option(sqlite_engine: Engine) -> None:
    seen = statements_of(sqlite_engine)
    with Session(sqlite_engine) as session:
        session.connection(execution_options={BEGIN_MODE: "DEFERRED"})
        session.execute(text("SELECT 1"))
    assert seen[0] == "BEGIN DEFERRED"


async def test_async_transactions_begin_immediate(
    sqlite_async_engine: AsyncEngine, tmp_path: Path
) -> None:
    """Behaviour, not statements: while an async session's transaction is open, nobody else
    can take the write lock."""
    other = build_engine(sqlite_settings(tmp_path / "sqlite.db", SQLITE_BUSY_TIMEOUT_MS=50))
    async with AsyncSession(sqlite_async_engine) as session:
        await session.execute(text("SELECT 1"))
        with pytest.raises(OperationalError, match="database is locked"), other.begin() as conn:
            conn.exec_driver_sql("SELECT 1")
    with other.begin() as conn:  # free again once the async transaction ended
        conn.exec_driver_sql("SELECT 1")
    other.dispose()


def test_immediate_takes_the_write_lock_and_deferred_does_not(tmp_path: Path) -> None:
    engine = build_engine(sqlite_settings(tmp_path / "lock.db", SQLITE_BUSY_TIMEOUT_MS=50))
    with engine.connect() as writer, engine.connect() as reader, engine.connect() as other:
        writer.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        writer.commit()
        writer.exec_driver_sql("INSERT INTO t VALUES (1)")  # BEGIN IMMEDIATE, lock held
        reader.execution_options(**{BEGIN_MODE: "DEFERRED"})
        assert reader.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
        with pytest.raises(OperationalError, match="database is locked"):
            other.exec_driver_sql("SELECT count(*) FROM t")
        writer.commit()
        other.rollback()
        assert other.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
        assert reader.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0  # its snapshot
    engine.dispose()


def test_an_unknown_begin_mode_is_rejected(sqlite_engine: Engine) -> None:
    with (
        sqlite_engine.connect() as conn,
        pytest.raises(ValueError, match=BEGIN_MODE),
    ):
        conn.execution_options(**{BEGIN_MODE: "LAZY"}).exec_driver_sql("SELECT 1")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
async def test_memory_database_is_shared_by_sync_and_async(url: str) -> None:
    async with engine_pair(Settings(DATABASE_URL=url)) as (engine, async_engine):
        with (
            container.engine.override(engine),
            container.async_engine.override(async_engine),
        ):
            ensure_database_schema()
            async with AsyncSessionLocal.begin() as session:
                session.add(new_user(f"memory-{len(url)}@example.com"))
            with SessionLocal() as session:
                assert session.scalars(select(User.email)).all() == [
                    f"memory-{len(url)}@example.com"
                ]


@pytest.mark.parametrize("build", [build_engine, build_async_engine])
def test_a_missing_sqlite_folder_is_a_clear_error(tmp_path: Path, build: Any) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ArgumentError, match="folder does not exist") as raised:
        build(Settings(DATABASE_URL=f"sqlite:///{missing}/app.db"))
    assert str(missing) in str(raised.value)


# The module attributes and session factories follow the container


def test_engine_attributes_follow_overrides(
    engines: tuple[Engine, AsyncEngine], sqlite_engine: Engine, sqlite_async_engine: AsyncEngine
) -> None:
    engine, async_engine = engines
    other_async = sqlite_async_engine
    assert app.database.engine is engine
    assert app.database.async_engine is async_engine
    with container.engine.override(sqlite_engine), container.async_engine.override(other_async):
        assert app.database.engine is sqlite_engine
        assert app.database.async_engine is other_async
    assert app.database.engine is engine
    assert app.database.async_engine is async_engine

    container.engine.override(sqlite_engine)
    assert app.database.engine is sqlite_engine
    container.engine.reset_last_overriding()
    assert app.database.engine is engine


def test_unknown_module_attributes_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        app.database.no_such_name  # noqa: B018


async def test_factories_imported_before_an_override_follow_it(
    engines: tuple[Engine, AsyncEngine], sqlite_engine: Engine, sqlite_async_engine: AsyncEngine
) -> None:
    engine, async_engine = engines
    with SessionLocal() as session:
        assert session.get_bind() is engine
    async with AsyncSessionLocal() as async_session:
        assert async_session.bind is async_engine

    other_async = sqlite_async_engine
    with container.engine.override(sqlite_engine), container.async_engine.override(other_async):
        with SessionLocal() as session, SessionLocal.begin() as begun:
            assert session.get_bind() is sqlite_engine
            assert begun.get_bind() is sqlite_engine
        async with AsyncSessionLocal() as async_session, AsyncSessionLocal.begin() as begun_a:
            assert async_session.bind is other_async
            assert begun_a.bind is other_async

    with SessionLocal() as session:
        assert session.get_bind() is engine


def test_sessions_are_new_and_keep_attributes_after_commit(schema: Engine) -> None:
    with SessionLocal() as first, SessionLocal() as second:
        assert first is not second
    with SessionLocal.begin() as session:
        alice = new_user("alice@example.com")
        session.add(alice)
    assert alice.email == "alice@example.com"  # expire_on_commit=False: no lazy load


# Transactions


def test_begin_commits_on_success(schema: Engine) -> None:
    with SessionLocal.begin() as session:
        session.add(new_user("a@example.com"))
    assert emails(schema) == {"a@example.com"}


def add_then_fail() -> None:
    with SessionLocal.begin() as session:
        session.add(new_user("a@example.com"))
        session.flush()
        raise RuntimeError("after the flush")


async def async_add_then_fail() -> None:
    async with AsyncSessionLocal.begin() as session:
        session.add(new_user("a@example.com"))
        await session.flush()
        raise RuntimeError("after the flush")


def test_begin_rolls_back_on_error(schema: Engine) -> None:
    with pytest.raises(RuntimeError, match="after the flush"):
        add_then_fail()
    assert count_rows(User) == 0


async def test_async_begin_commits_on_success(schema: Engine) -> None:
    async with AsyncSessionLocal.begin() as session:
        session.add(new_user("a@example.com"))
    assert emails(schema) == {"a@example.com"}


async def test_async_begin_rolls_back_on_error(schema: Engine) -> None:
    with pytest.raises(RuntimeError, match="after the flush"):
        await async_add_then_fail()
    assert count_rows(User) == 0


def add_in_savepoint_then_fail(session: Session) -> None:
    with session.begin_nested():
        session.add(new_user("dropped@example.com"))
        session.flush()
        raise RuntimeError("roll back to the savepoint")


async def async_add_in_savepoint_then_fail(session: AsyncSession) -> None:
    async with session.begin_nested():
        session.add(new_user("dropped@example.com"))
        await session.flush()
        raise RuntimeError("roll back to the savepoint")


def test_savepoints(schema: Engine) -> None:
    with SessionLocal.begin() as session:
        session.add(new_user("kept@example.com"))
        with pytest.raises(RuntimeError, match="savepoint"):
            add_in_savepoint_then_fail(session)
        with session.begin_nested():
            session.add(new_user("also-kept@example.com"))
    assert emails(schema) == {"kept@example.com", "also-kept@example.com"}


async def test_async_savepoints(schema: Engine) -> None:
    async with AsyncSessionLocal.begin() as session:
        session.add(new_user("kept@example.com"))
        with pytest.raises(RuntimeError, match="savepoint"):
            await async_add_in_savepoint_then_fail(session)
    assert emails(schema) == {"kept@example.com"}


# ensure_database_schema


def test_ensure_database_schema_is_idempotent(engine: Engine) -> None:
    ensure_database_schema()
    with SessionLocal.begin() as session:
        session.add(new_user("a@example.com"))
    ensure_database_schema()
    assert {"users", "items"} <= set(inspect(engine).get_table_names())
    assert emails(engine) == {"a@example.com"}


@pytest.mark.parametrize("kind", ["folder-is-a-file", "unreadable-file"])
def test_ensure_database_schema_raises_on_an_unusable_database(tmp_path: Path, kind: str) -> None:
    if kind == "folder-is-a-file":
        (tmp_path / "file").write_text("not a folder")
        path = tmp_path / "file" / "app.db"
    else:
        path = tmp_path / "garbage.db"
        path.write_bytes(b"this is not a SQLite database" * 200)
    broken = create_engine(f"sqlite:///{path}")
    with container.engine.override(broken), pytest.raises(SQLAlchemyError):
        ensure_database_schema()
    broken.dispose()


def test_ensure_database_schema_raises_on_a_missing_sqlite_folder(tmp_path: Path) -> None:
    missing = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'no-such-folder' / 'app.db'}")
    with (
        container.engine.override(providers.Callable(build_engine, missing)),
        pytest.raises(SQLAlchemyError, match="no-such-folder"),
    ):
        ensure_database_schema()
