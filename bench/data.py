"""Benchmark databases: the app's schema, seeded fast, on SQLite files or fresh PostgreSQL ones."""

import io
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import create_engine, make_url, text

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.database import Base

__all__ = ["Dataset", "postgres_database", "seed", "sqlite_url"]

_CHUNK = 50_000
_DROP = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")


@dataclass(frozen=True)
class Dataset:
    """``users`` users with ``items_per_user`` items each; item ids run user by user."""

    users: int
    items_per_user: int

    @property
    def items(self) -> int:
        return self.users * self.items_per_user

    def describe(self) -> str:
        return f"{self.users:,} users, {self.items:,} items"


def sqlite_url(path: Path) -> str:
    """``sqlite:///path`` for a file that does not exist yet (left-overs are removed)."""
    for stale in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        stale.unlink(missing_ok=True)
    return f"sqlite:///{path}"


def _user_rows(data: Dataset) -> Iterator[tuple[str]]:
    return ((f"user{u}@example.com",) for u in range(1, data.users + 1))


def _item_rows(data: Dataset) -> Iterator[tuple[str, int]]:
    return (
        (f"item {u}.{i}", u) for u in range(1, data.users + 1) for i in range(data.items_per_user)
    )


def _fill_sqlite(connection: sqlite3.Connection, data: Dataset) -> None:
    connection.executemany(
        # The addresses are in canonical form already: their own email_key.
        "INSERT INTO users (email, email_key, hashed_password) VALUES (?1, ?1, '-')",
        _user_rows(data),
    )
    connection.executemany(
        "INSERT INTO items (title, description, owner_id) VALUES (?, 'seeded', ?)",
        _item_rows(data),
    )


def _copy(cursor: psycopg.Cursor[Any], statement: str, lines: Iterator[str]) -> None:
    with cursor.copy(statement) as copy:
        buffer = io.StringIO()
        for n, line in enumerate(lines, 1):
            buffer.write(line)
            if n % _CHUNK == 0:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def _fill_postgres(connection: psycopg.Connection[Any], data: Dataset) -> None:
    with connection.cursor() as cursor:
        _copy(
            cursor,
            "COPY users (email, email_key, hashed_password) FROM STDIN",
            (f"{email}\t{email}\t-\n" for (email,) in _user_rows(data)),
        )
        _copy(
            cursor,
            "COPY items (title, description, owner_id) FROM STDIN",
            (f"{title}\tseeded\t{owner}\n" for title, owner in _item_rows(data)),
        )


def seed(url: str, data: Dataset) -> float:
    """The schema by the app's models' ``create_all`` (as the tutorial makes it), then
    ``data`` in one transaction: executemany on SQLite, COPY on PostgreSQL. Seconds taken."""
    started = perf_counter()
    engine = create_engine(url)
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as connection:
            driver = connection.connection.driver_connection
            if isinstance(driver, sqlite3.Connection):
                _fill_sqlite(driver, data)
            elif isinstance(driver, psycopg.Connection):
                _fill_postgres(driver, data)
            else:
                raise TypeError(f"no seeding for {engine.dialect.name}")
        if engine.dialect.name == "postgresql":
            with engine.begin() as connection:
                connection.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return perf_counter() - started


@contextmanager
def postgres_database(server_url: str, name: str) -> Iterator[str]:
    """A new empty database ``name`` on the server of ``server_url``, dropped on exit;
    yields its ``postgresql+psycopg://`` URL."""
    server = make_url(server_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(_DROP.format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(_DROP.format(sql.Identifier(name)))
