"""Alembic migrations of the schema, run on the container's current sync engine."""

import importlib.util
import sys
from typing import TYPE_CHECKING, Literal

from sqlalchemy import inspect
from sqlalchemy.engine import URL

from app.config import Settings
from app.database import Base
from app.db import sqlite
from app.db.urls import backend
from app.exceptions import UnversionedDatabaseError
from containers import container

if TYPE_CHECKING:
    # Alembic (with Mako) is imported when a migration runs, not by every worker at start.
    from alembic.config import Config

__all__ = [
    "SchemaSetup",
    "alembic_config",
    "schema_setup",
    "upgrade",
]

SchemaSetup = Literal["migrate", "create_all", "none"]


def alembic_config() -> "Config":
    """Alembic's configuration for this package, whatever the working directory."""
    from alembic.config import Config

    config = Config(stdout=sys.stdout)  # the current one: Alembic's default is bound at import
    config.set_main_option("script_location", "app:migrations")
    config.set_main_option("path_separator", "os")
    if importlib.util.find_spec("ruff") is not None:
        # Revisions come out of `app db revision` lint-fixed and formatted.
        config.set_section_option("post_write_hooks", "hooks", "ruff_fix ruff_format")
        for hook, options in (
            ("ruff_fix", "check --fix --exit-zero --quiet"),
            ("ruff_format", "format"),
        ):
            config.set_section_option("post_write_hooks", f"{hook}.type", "module")
            config.set_section_option("post_write_hooks", f"{hook}.module", "ruff")
            config.set_section_option(
                "post_write_hooks", f"{hook}.options", f"{options} REVISION_SCRIPT_FILENAME"
            )
    return config


def schema_setup(s: Settings, url: str | URL) -> SchemaSetup:
    """What the service does to the schema at startup (the rule is in docs/migrations.md)."""
    if s.MIGRATE_ON_STARTUP:
        return "migrate"
    create = s.CREATE_SCHEMA if s.CREATE_SCHEMA is not None else backend(url) == "sqlite"
    return "create_all" if create else "none"


def upgrade(revision: str = "head", *, sql: bool = False, config: "Config | None" = None) -> None:
    """Migrate the container's current database to ``revision``; ``sql`` only prints the SQL."""
    if not sql:
        _refuse_unversioned()
    from alembic import command

    command.upgrade(config or alembic_config(), revision, sql=sql)


def _refuse_unversioned() -> None:
    from alembic.runtime.migration import MigrationContext

    # One DEFERRED read transaction on SQLite: both reads see the same snapshot. On
    # PostgreSQL, tables and their alembic_version row commit together, so reading the
    # tables first cannot see them without a revision that exists.
    options = {sqlite.BEGIN_MODE: "DEFERRED"}
    with container.engine().connect().execution_options(**options) as connection:
        ours = set(inspect(connection).get_table_names()) & set(Base.metadata.tables)
        if ours and MigrationContext.configure(connection).get_current_revision() is None:
            raise UnversionedDatabaseError(
                f"the database has tables ({', '.join(sorted(ours))}) but no Alembic revision, "
                "so create_all made it: run `app db stamp head` once if they match the current "
                "models (else stamp the revision they match), then upgrade"
            )
