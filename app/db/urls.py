"""Which backend a URL (or engine) is, and the URLs each engine is built from."""

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url

__all__ = ["ASYNC_DRIVERS", "async_url", "backend", "is_memory", "sync_url"]

ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg_async",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
"""The async driver for each scheme ``DATABASE_URL`` may have."""


def backend(of: str | URL | Engine | Connection) -> str:
    """``"sqlite"`` or ``"postgresql"`` (or another SQLAlchemy backend name): the one answer
    to "which database is this", for a URL, an engine or a connection."""
    if isinstance(of, Engine | Connection):
        return of.dialect.name
    return make_url(of).get_backend_name()


def is_memory(url: str | URL) -> bool:
    """An in-memory SQLite database (gone with its last connection)."""
    u = make_url(url)
    database = u.database or ""
    return (
        database in ("", ":memory:")
        or "mode=memory" in database
        or (u.query.get("mode") == "memory")
    )


def sync_url(url: str) -> str:
    """The sync engine's URL: plain ``postgresql://`` gets psycopg 3, not SQLAlchemy's
    default psycopg2."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme == "postgresql" else url


def async_url(database_url: str, override: str | None = None) -> str:
    """The async engine's URL: ``override`` (ASYNC_DATABASE_URL), or ``database_url`` with
    its async driver."""
    if override:
        return override
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in ASYNC_DRIVERS:
        raise ValueError(
            f"DATABASE_URL must start with one of {', '.join(sorted(ASYNC_DRIVERS))}:// "
            f"(or set ASYNC_DATABASE_URL), got scheme {scheme!r}"
        )
    return f"{ASYNC_DRIVERS[scheme]}://{rest}"
