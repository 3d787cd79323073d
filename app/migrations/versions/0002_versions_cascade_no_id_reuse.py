"""row versions, ON DELETE CASCADE for items, ids never reused

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:30:00.000000
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FK = "fk_items_owner_id_users"


def _users(*, at_0002: bool) -> sa.Table:
    """The users table as a revision left it (what SQLite's rebuild copies from)."""
    return sa.Table(
        "users",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("hashed_password", sa.String(length=255), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default="1", nullable=False),
        *([_version()] if at_0002 else []),
        sa.Index("ix_users_email", "email", unique=True),
        sqlite_autoincrement=at_0002,
    )


def _items(*, at_0002: bool) -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("users", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    return sa.Table(
        "items",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=True),
        sa.Column(
            "owner_id",
            sa.Integer(),
            sa.ForeignKey("users.id", name=_FK, ondelete="CASCADE" if at_0002 else None),
            nullable=False,
        ),
        *([_version()] if at_0002 else []),
        sa.Index("ix_items_owner_id", "owner_id"),
        sa.Index("ix_items_title", "title"),
        sqlite_autoincrement=at_0002,
    )


def _rebuild_on_sqlite(before: sa.Table, *, autoincrement: bool) -> dict[str, Any]:
    """SQLite only: rebuild the table from ``before`` (also in --sql mode, where nothing can
    be reflected) so that its id is, or is not, AUTOINCREMENT, which stops SQLite from
    handing a deleted row's id to the next insert. PostgreSQL gets plain ALTERs; its
    sequences never reuse ids."""
    if op.get_context().dialect.name != "sqlite":
        return {}
    return {
        "recreate": "always",
        "copy_from": before,
        "table_kwargs": {"sqlite_autoincrement": autoincrement},
    }


def _version() -> sa.Column[int]:
    return sa.Column("version", sa.Integer(), server_default="1", nullable=False)


def upgrade() -> None:
    users = _rebuild_on_sqlite(_users(at_0002=False), autoincrement=True)
    with op.batch_alter_table("users", **users) as batch_op:
        batch_op.add_column(_version())
    items = _rebuild_on_sqlite(_items(at_0002=False), autoincrement=True)
    with op.batch_alter_table("items", **items) as batch_op:
        batch_op.add_column(_version())
        batch_op.drop_constraint(_FK, type_="foreignkey")
        batch_op.create_foreign_key(_FK, "users", ["owner_id"], ["id"], ondelete="CASCADE")


def downgrade() -> None:
    items = _rebuild_on_sqlite(_items(at_0002=True), autoincrement=False)
    with op.batch_alter_table("items", **items) as batch_op:
        batch_op.drop_constraint(_FK, type_="foreignkey")
        batch_op.create_foreign_key(_FK, "users", ["owner_id"], ["id"])
        batch_op.drop_column("version")
    users = _rebuild_on_sqlite(_users(at_0002=True), autoincrement=False)
    with op.batch_alter_table("users", **users) as batch_op:
        batch_op.drop_column("version")
