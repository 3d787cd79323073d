"""Section 4: committed single-row inserts per second, raw sqlite3 versus this app's sessions."""

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import perf_counter

from app.database import AsyncSessionLocal, SessionLocal, ensure_database_schema
from app.lifespan import dispose_engines
from app.models import Item, User
from bench.micro import use_database
from bench.report import Table
from containers import container

__all__ = ["floor_table"]


def _use_fresh_database(path: Path) -> None:
    use_database(path)
    ensure_database_schema()
    with SessionLocal.begin() as session:
        session.add(User(email="floor@example.com", hashed_password="-"))


def _rate(insert: Callable[[int], None], budget: float) -> float:
    start = perf_counter()
    count = 0
    while perf_counter() - start < budget:
        insert(count)
        count += 1
    return count / (perf_counter() - start)


async def _async_rate(insert: Callable[[int], Awaitable[None]], budget: float) -> float:
    start = perf_counter()
    count = 0
    while perf_counter() - start < budget:
        await insert(count)
        count += 1
    return count / (perf_counter() - start)


def _raw(path: Path, budget: float) -> float:
    _use_fresh_database(path)
    container.engine().dispose()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")

        def insert(i: int) -> None:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                "INSERT INTO items (title, description, owner_id) VALUES (?, ?, 1)",
                (f"item {i}", None),
            )
            connection.execute("COMMIT")

        return _rate(insert, budget)
    finally:
        connection.close()


def _session(path: Path, budget: float) -> float:
    _use_fresh_database(path)

    def insert(i: int) -> None:
        with SessionLocal.begin() as session:
            session.add(Item(title=f"item {i}", owner_id=1))

    try:
        return _rate(insert, budget)
    finally:
        container.engine().dispose()


def _async_session(path: Path, budget: float) -> float:
    _use_fresh_database(path)

    async def insert(i: int) -> None:
        async with AsyncSessionLocal.begin() as session:
            session.add(Item(title=f"item {i}", owner_id=1))

    async def run() -> float:
        try:
            return await _async_rate(insert, budget)
        finally:
            await dispose_engines()

    return asyncio.run(run())


def floor_table(folder: Path, *, quick: bool) -> Table:
    budget = 0.3 if quick else 3.0
    raw = _raw(folder / "raw.db", budget)
    sync = _session(folder / "session.db", budget)
    async_ = _async_session(folder / "async_session.db", budget)
    table = Table(
        "4. SQLite write floor (one committed single-row insert per transaction, one thread)",
        ("path", "inserts/s", "share of raw"),
        notes=[
            "Raw: sqlite3 module, WAL, synchronous=NORMAL, foreign_keys=ON, BEGIN IMMEDIATE/"
            "INSERT/COMMIT. The app rows use the same database settings through the container."
        ],
    )
    table.add("raw sqlite3", f"{raw:,.0f}", "100%")
    table.add("SessionLocal.begin() + add(Item)", f"{sync:,.0f}", f"{sync / raw:.0%}")
    table.add("AsyncSessionLocal.begin() + add(Item)", f"{async_:,.0f}", f"{async_ / raw:.0%}")
    return table
