"""Alembic's environment: migrates the container's current sync engine to ``Base.metadata``."""

from typing import Any

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection

from app.database import Base, lock_schema
from app.db.urls import backend
from containers import container


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: autogenerate renders batch operations, which
        # recreate the table there and are plain ALTERs on PostgreSQL.
        render_as_batch=True,
        compare_server_default=True,
        # app.db.sqlite makes SQLite transactions explicit, so DDL is transactional there too:
        # a failed upgrade leaves no half-migrated schema on either backend.
        transactional_ddl=True,
        **options,
    )


def _run_offline() -> None:
    _configure(url=container.engine().url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    with container.engine().connect() as connection:
        _configure(connection=connection)
        on_sqlite = backend(connection) == "sqlite"
        if on_sqlite:
            # A batch operation recreates its table, and dropping a referenced table with
            # enforcement on fails. SQLite ignores this pragma inside a transaction, so it is
            # switched off before, the result is checked before commit, and it is switched
            # back on for the next user of the pooled connection.
            _sqlite_pragma(connection, "foreign_keys = OFF")
        try:
            with context.begin_transaction():
                lock_schema(connection)  # concurrent upgrades (replicas starting) take turns
                context.run_migrations()
                if on_sqlite:
                    _check_foreign_keys(connection)
        finally:
            if on_sqlite:
                _sqlite_pragma(connection, "foreign_keys = ON")


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    # On the DBAPI connection: through SQLAlchemy it would first BEGIN a transaction.
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _check_foreign_keys(connection: Connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if violations:
        tables = sorted({row[0] for row in violations})
        raise CommandError(
            f"the migration leaves {len(violations)} rows violating foreign keys in "
            f"{', '.join(tables)}; nothing was changed"
        )


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
