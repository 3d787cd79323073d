"""app.units: Reader / Writer: a unit of work takes one worker thread, a gate slot and a
session; a read cannot write."""

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, event, func, insert, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from app.config import Settings
from app.database import SessionLocal, ensure_database_schema
from app.db.engines import build_async_engine, build_engine
from app.db.urls import backend
from app.exceptions import DatabaseBusyError, EmailAlreadyRegisteredError, WriteInReadError
from app.models import User
from app.schemas import UserCreate, UserRead
from app.services import UserService
from app.testing.plugin import count_rows, engine_pair
from app.units.gate import Gate
from app.units.reader import Reader
from app.units.writer import Writer
from containers import container
from tests.factories import add, new_user

pytestmark = pytest.mark.pgbouncer


def _checked_out(engine: Engine) -> int:
    assert isinstance(engine.pool, QueuePool)
    return engine.pool.checkedout()


async def test_a_read_runs_in_a_worker_thread_inside_a_transaction_and_closes_it(
    schema: Engine,
) -> None:
    user_id = add(User, email="reader@example.com")
    seen: dict[str, Any] = {}

    def email_of(session: Session, wanted: int) -> str | None:
        seen["thread"] = threading.get_ident()
        seen["session"] = session
        email = session.scalar(select(User.email).where(User.id == wanted))
        seen["in_transaction"] = session.in_transaction()
        return email

    read = Reader(Gate(capacity=2, timeout=1), container.session)
    assert await read(email_of, user_id) == "reader@example.com"
    assert seen["thread"] != threading.get_ident()
    assert seen["in_transaction"] is True
    assert seen["session"].in_transaction() is False
    assert _checked_out(schema) == 0


async def test_an_error_in_a_read_propagates_and_frees_the_slot_and_connection(
    schema: Engine,
) -> None:
    def fail(session: Session) -> None:
        session.execute(text("SELECT 1"))
        raise LookupError("no such thing")

    read = Reader(Gate(capacity=1, timeout=0.2), container.session)
    with pytest.raises(LookupError, match="no such thing"):
        await read(fail)
    assert _checked_out(schema) == 0
    # One slot: had the failed read kept it, this one would wait and get DatabaseBusyError.
    assert await read(lambda session: session.scalar(select(func.count(User.id)))) == 0


async def test_reads_past_capacity_wait_on_the_event_loop_not_in_threads(schema: Engine) -> None:
    capacity, reads = 2, 8
    lock = threading.Lock()
    running, most = 0, 0

    def slow(session: Session) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)
            return int(session.scalar(text("SELECT 1")) or 0)
        finally:
            with lock:
                running -= 1

    read = Reader(Gate(capacity=capacity, timeout=10), container.session)
    results: list[int] = []

    async def one() -> None:
        results.append(await read(slow))

    async with anyio.create_task_group() as tasks:
        for _ in range(reads):
            tasks.start_soon(one)
    assert results == [1] * reads
    assert most == capacity


async def test_a_read_that_cannot_get_a_slot_in_time_is_database_busy(schema: Engine) -> None:
    gate = Gate(capacity=1, timeout=0.1)
    await gate.acquire()  # someone else holds the only slot
    try:
        with pytest.raises(DatabaseBusyError, match=r"within 0\.1s"):
            await Reader(gate, container.session)(lambda session: session.scalar(text("SELECT 1")))
    finally:
        gate.release()


def test_read_endpoints_use_the_overridden_session_provider(client: TestClient) -> None:
    opened: list[Session] = []

    def recording_session() -> Session:
        session = Session(container.engine(), expire_on_commit=False)
        opened.append(session)
        return session

    user_id = client.post("/users/", json={"email": "o@example.com", "password": "pw"}).json()["id"]
    with container.session.override(providers.Factory(recording_session)):
        assert client.get(f"/users/{user_id}").status_code == 200
        assert client.get("/users/").status_code == 200
        assert client.get("/items/").status_code == 200
        assert client.get("/health").status_code == 200
    assert len(opened) == 4
    assert all(not session.in_transaction() for session in opened)


async def test_a_write_commits_when_the_work_returns(schema: Engine) -> None:
    def add(session: Session, email: str) -> int:
        user = new_user(email)
        session.add(user)
        session.flush()
        return user.id

    user_id = await Writer(Gate(capacity=1, timeout=1), container.session)(add, "w@example.com")
    with SessionLocal() as session:
        assert session.get(User, user_id) is not None
    assert _checked_out(schema) == 0


async def test_a_write_that_raises_commits_nothing(schema: Engine) -> None:
    def add_then_fail(session: Session) -> None:
        session.add(new_user("gone@example.com"))
        session.flush()
        raise LookupError("after the insert")

    write = Writer(Gate(capacity=1, timeout=0.2), container.session)
    with pytest.raises(LookupError, match="after the insert"):
        await write(add_then_fail)
    assert count_rows(User) == 0
    assert _checked_out(schema) == 0
    assert await write(lambda session: session.scalar(text("SELECT 1"))) == 1  # slot freed


def _add(session: Session) -> None:
    session.add(new_user("sneaky@example.com"))


def _add_and_flush(session: Session) -> None:
    _add(session)
    session.flush()


def _add_then_query(session: Session) -> None:
    _add(session)
    session.scalar(select(func.count(User.id)))  # autoflush


def _insert_statement(session: Session) -> None:
    session.execute(insert(User).values(email="core@example.com", hashed_password="-"))


def _insert_sql(session: Session) -> None:
    session.execute(
        text(
            "INSERT INTO users (email, email_key, hashed_password) VALUES ('t@x.io', 't@x.io', '-')"
        )
    )


def _change(session: Session) -> None:
    user = session.scalars(select(User)).one()
    user.email = "changed@example.com"


def _delete_statement(session: Session) -> None:
    session.execute(delete(User))


@pytest.mark.parametrize(
    "work",
    [
        _add,
        _add_and_flush,
        _add_then_query,
        _insert_statement,
        _insert_sql,
        _change,
        _delete_statement,
    ],
)
async def test_a_read_that_writes_fails_loudly_and_changes_nothing(
    schema: Engine, work: Callable[[Session], None]
) -> None:
    add(User, email="kept@example.com")
    read = Reader(Gate(capacity=1, timeout=1), container.session)
    with pytest.raises(WriteInReadError, match=work.__name__):
        await read(work)
    with SessionLocal() as session:
        assert session.scalars(select(User.email)).all() == ["kept@example.com"]
    assert _checked_out(schema) == 0
    # The same pooled connection serves a write next: the read-only mode went with the read.
    user_id = await Writer(Gate(capacity=1, timeout=1), container.session)(_add_and_return_id)
    assert count_rows(User, User.id == user_id) == 1
    # And the database refuses a read's write again after that write (SQLite switches the
    # connection's mode only when a transaction wants the other one).
    with pytest.raises(WriteInReadError, match="_delete_statement"):
        await read(_delete_statement)
    assert count_rows(User) == 2


def _add_and_return_id(session: Session) -> int:
    user = new_user("after@example.com")
    session.add(user)
    session.flush()
    return user.id


def test_an_endpoint_whose_read_writes_answers_500_and_logs_the_endpoint(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    class WritingUsers(UserService):
        def get_page(
            self, session: Session, *, skip: int, limit: int, after_id: int | None = None
        ) -> list[UserRead]:
            session.add(new_user("ghost@example.com"))
            return super().get_page(session, skip=skip, limit=limit, after_id=after_id)

    with container.user_service.override(
        providers.Factory(WritingUsers, passwords=container.passwords)
    ):
        response = client.get("/users/")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert count_rows(User) == 0
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "GET /users/ (read_users)" in record.getMessage()
    assert "WritingUsers.get_page" in record.getMessage()


@contextmanager
def serving(database_url: str, **settings: Any) -> Iterator[TestClient]:
    """The app started (lifespan run) on this test's database with these settings."""
    from app.main import app

    s = Settings(DATABASE_URL=database_url, **settings)
    engine, async_engine = build_engine(s), build_async_engine(s)
    try:
        with (
            container.settings.override(s),
            container.engine.override(engine),
            container.async_engine.override(async_engine),
            TestClient(app) as client,
        ):
            yield client
    finally:  # overrides belong to whoever set them: the lifespan leaves them open
        engine.dispose()
        anyio.run(async_engine.dispose)


def _at_once() -> tuple[int, int]:
    """(reads, writes) the started app runs at once."""
    reader: Reader = container.reader()
    writer: Writer = container.writer()
    return reader.gate.capacity, writer.gate.capacity


@pytest.mark.parametrize(("pool", "overflow"), [(4, 3), (2, 1)])
def test_sqlite_runs_two_reads_and_one_write_at_once_servers_four_of_each_within_the_pool(
    database_url: str, pool: int, overflow: int
) -> None:
    with serving(database_url, DB_POOL_SIZE=pool, DB_MAX_OVERFLOW=overflow) as client:
        on_server = min(4, pool + overflow)
        expected = (2, 1) if backend(database_url) == "sqlite" else (on_server, on_server)
        assert _at_once() == expected
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({"MAX_CONCURRENT_READS": 6, "MAX_CONCURRENT_WRITES": 3}, (6, 3)),
        ({"MAX_CONCURRENT_READS": 1, "MAX_CONCURRENT_WRITES": 2}, (1, 2)),
        (
            {
                "MAX_CONCURRENT_READS": 50,
                "MAX_CONCURRENT_WRITES": 50,
                "DB_POOL_SIZE": 3,
                "DB_MAX_OVERFLOW": 1,
            },
            (4, 4),
        ),
        ({"MAX_CONCURRENT_READS": 50, "MAX_CONCURRENT_WRITES": 9, "THREADPOOL_SIZE": 5}, (5, 5)),
    ],
)
def test_reads_and_writes_at_once_follow_the_settings_within_the_pool_and_threads(
    database_url: str, knobs: dict[str, int], expected: tuple[int, int]
) -> None:
    with serving(database_url, **knobs) as client:
        assert _at_once() == expected
        assert client.get("/health").status_code == 200


def test_an_in_memory_database_serves_concurrent_reads_and_writes() -> None:
    """One connection shared without waiting (StaticPool): reads and writes take turns."""
    with serving("sqlite://") as client:
        reads, writes = _at_once()
        assert (reads, writes) == (1, 1)
        assert container.reader().gate is container.writer().gate
        owner = client.post("/users/", json={"email": "m@example.com", "password": "pw"})
        assert owner.status_code == 200
        path = f"/users/{owner.json()['id']}"
        statuses: list[int] = []

        def hammer(write: bool) -> None:
            for n in range(15):
                if write:
                    response = client.post(f"{path}/items/", json={"title": f"t{n}"})
                else:
                    response = client.get(path)
                statuses.append(response.status_code)

        threads = [threading.Thread(target=hammer, args=(n % 2 == 0,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert statuses == [200] * 90
        assert len(client.get(path).json()["items"]) == 3 * 15


# SQLite reads on the event loop, within a budget


_SLOW_SQL = text(
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) "
    "SELECT count(*) FROM c"
)


@pytest.fixture
async def sqlite_schema(tmp_path: Path) -> AsyncIterator[Engine]:
    """A SQLite database whatever the backend under test: reads run on the event loop only
    there."""
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'loop.db'}")
    async with engine_pair(settings) as (engine, async_engine):
        with container.engine.override(engine), container.async_engine.override(async_engine):
            ensure_database_schema()
            yield engine


async def test_a_short_read_runs_on_the_event_loop_within_its_budget(
    sqlite_schema: Engine,
) -> None:
    threads: list[int] = []

    def where(session: Session) -> int:
        threads.append(threading.get_ident())
        return int(session.scalar(text("SELECT 1")) or 0)

    assert await Reader(Gate(2, 1), container.session, inline_budget=0.5)(where) == 1
    assert await Reader(Gate(2, 1), container.session, inline_budget=None)(where) == 1
    assert threads[0] == threading.get_ident()
    assert threads[1] != threading.get_ident()


async def test_a_read_over_its_budget_is_interrupted_and_run_again_in_a_thread(
    sqlite_schema: Engine,
) -> None:
    threads: list[int] = []

    def slow(session: Session) -> int:
        threads.append(threading.get_ident())
        return int(session.scalar(_SLOW_SQL) or 0)

    read = Reader(Gate(1, 1), container.session, inline_budget=0.001)
    assert await read(slow) == 300000
    assert threads[0] == threading.get_ident()  # started on the loop, then interrupted
    assert len(threads) == 2
    assert threads[1] != threading.get_ident()
    assert _checked_out(sqlite_schema) == 0
    assert await read(lambda session: session.scalar(text("SELECT 2"))) == 2  # slot freed


async def test_a_read_that_holds_the_event_loop_is_reported(
    sqlite_schema: Engine, caplog: pytest.LogCaptureFixture
) -> None:

    def dawdle(session: Session) -> None:
        time.sleep(0.15)  # Python, which no budget interrupts

    read = Reader(Gate(1, 1), container.session, inline_budget=0.01)
    await read(dawdle)
    await read(dawdle)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # at most one every 10 s
    assert "dawdle held the event loop" in warnings[0]


# Group commit: writes that queue share a transaction


def _commits(engine: Engine) -> list[int]:
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    return commits


async def test_queued_writes_share_transactions_and_all_commit(schema: Engine) -> None:
    commits = _commits(schema)
    write = Writer(Gate(1, 10), container.session, batch_size=8)
    results: dict[int, int] = {}

    async def one(n: int) -> None:
        results[n] = await write(_add_and_return_id_for, f"batch{n}@example.com")

    async with anyio.create_task_group() as tasks:
        for n in range(40):
            tasks.start_soon(one, n)
    assert count_rows(User) == 40
    assert len(set(results.values())) == 40
    with SessionLocal() as session:
        emails = dict(session.execute(select(User.id, User.email)).all())
    assert all(emails[user_id] == f"batch{n}@example.com" for n, user_id in results.items())
    assert 40 / 8 <= len(commits) < 40  # batched, never more than 8 to a transaction


def _add_and_return_id_for(session: Session, email: str) -> int:
    user = new_user(email)
    session.add(user)
    session.flush()
    return user.id


async def test_a_failing_write_in_a_batch_fails_alone(schema: Engine) -> None:
    write = Writer(Gate(1, 10), container.session, batch_size=16)
    outcomes: dict[int, object] = {}

    def add(session: Session, n: int) -> int:
        user_id = _add_and_return_id_for(session, f"w{n}@example.com")
        if n == 3:
            raise LookupError("unit 3 fails after its insert")
        return user_id

    async def one(n: int) -> None:
        try:
            outcomes[n] = await write(add, n)
        except LookupError as error:
            outcomes[n] = error

    async with anyio.create_task_group() as tasks:
        for n in range(10):
            tasks.start_soon(one, n)
    assert isinstance(outcomes.pop(3), LookupError)
    assert all(isinstance(user_id, int) for user_id in outcomes.values())
    with SessionLocal() as session:
        emails = set(session.scalars(select(User.email)))
    assert emails == {f"w{n}@example.com" for n in range(10) if n != 3}


async def test_same_email_writes_in_one_batch_have_one_winner(schema: Engine) -> None:
    write = Writer(Gate(1, 10), container.session, batch_size=16)
    users = container.user_service()
    outcomes: list[object] = []

    async def signup() -> None:
        user_in = UserCreate(email="same@example.com", password="pw")
        try:
            outcomes.append(await write(users.create, user_in, "-"))
        except EmailAlreadyRegisteredError as error:
            outcomes.append(error)

    async with anyio.create_task_group() as tasks:
        for _ in range(6):
            tasks.start_soon(signup)
    assert sum(isinstance(o, EmailAlreadyRegisteredError) for o in outcomes) == 5
    assert count_rows(User) == 1


@contextlib.asynccontextmanager
async def busy(write: Writer) -> AsyncIterator[None]:
    """``write`` running a transaction that lasts until the block ends."""
    entered, release = threading.Event(), threading.Event()

    def hold(session: Session) -> None:
        session.execute(text("SELECT 1"))
        entered.set()
        release.wait(timeout=30)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(write, hold)
        assert await anyio.to_thread.run_sync(entered.wait, 30)
        try:
            yield
        finally:
            release.set()


async def test_a_write_that_waits_past_the_timeout_is_busy_and_never_runs(schema: Engine) -> None:
    write = Writer(Gate(1, 0.2), container.session, batch_size=8)
    async with busy(write):
        with pytest.raises(DatabaseBusyError, match=r"within 0\.2s"):
            await write(_add_and_return_id_for, "late@example.com")
    assert count_rows(User) == 0
    assert await write(_add_and_return_id_for, "next@example.com") > 0


async def test_a_cancelled_queued_write_never_runs(schema: Engine) -> None:
    write = Writer(Gate(1, 10), container.session, batch_size=8)
    async with busy(write):
        with anyio.move_on_after(0.1):
            await write(_add_and_return_id_for, "cancelled@example.com")
    assert count_rows(User) == 0
