"""The documented database API, resolved through the container at every use.

``engine`` and ``async_engine`` are the container's current engines, and ``SessionLocal`` /
``AsyncSessionLocal`` build sessions from its current ``session`` / ``async_session``
providers, so overriding a provider reaches every caller, including code that imported
these names before the override.

>>> from app.database import ensure_database_schema
>>> ensure_database_schema()
>>> from app.database import SessionLocal
>>> with SessionLocal() as session:
...     pass
>>> from app.database import AsyncSessionLocal
>>> async def get_count() -> int:
...     async with AsyncSessionLocal() as session:
...         return 0
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.base import Base
from app.db.urls import backend
from containers import container

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "AsyncSessionLocal",
    "Base",
    "SessionLocal",
    "async_engine",
    "engine",
    "ensure_database_schema",
    "lock_schema",
]


class _SessionFactory:
    """``sessionmaker``'s calling conventions over ``container.session``."""

    def __call__(self, **kw: Any) -> Session:
        session: Session = container.session(**kw)
        return session

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self() as session, session.begin():
            yield session

    def __repr__(self) -> str:
        return "SessionLocal(<container.session>)"


class _AsyncSessionFactory:
    """``async_sessionmaker``'s calling conventions over ``container.async_session``."""

    def __call__(self, **kw: Any) -> AsyncSession:
        session: AsyncSession = container.async_session(**kw)
        return session

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        """An async session in a transaction: committed on success, rolled back on error."""
        async with self() as session, session.begin():
            yield session

    def __repr__(self) -> str:
        return "AsyncSessionLocal(<container.async_session>)"


SessionLocal = _SessionFactory()
AsyncSessionLocal = _AsyncSessionFactory()


_SCHEMA_LOCK_KEY = 0x736368656D61
"""PostgreSQL's advisory lock for schema changes ("schema" in ASCII)."""


def lock_schema(connection: Connection) -> None:
    """Take turns at changing the schema, until ``connection``'s transaction ends.

    Workers and instances starting together would race to CREATE TABLE (on PostgreSQL a
    unique violation in pg_type); queued, each finds what its predecessor committed. Both
    ``create_all`` and migrations take it. On SQLite the transaction's ``BEGIN IMMEDIATE``
    already queues them.
    """
    if backend(connection) == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})


def ensure_database_schema() -> None:
    """Create the missing tables on the current sync engine; idempotent."""
    with container.engine().begin() as connection:
        lock_schema(connection)
        Base.metadata.create_all(connection)


def __getattr__(name: str) -> Any:
    if name == "engine":
        return container.engine()
    if name == "async_engine":
        return container.async_engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    engine: Engine
    async_engine: AsyncEngine
