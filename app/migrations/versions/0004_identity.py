"""identity: one account per e-mail, credentials versions, sessions and refresh tokens

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 06:21:55.487875
"""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

from app.emails import canonical_email

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _users(stage: str) -> sa.Table:
    """The users table at 0003, while its e-mail keys are filled in, and at 0004 (what
    SQLite's rebuild copies from)."""
    before, at_0004 = stage == "0003", stage == "0004"
    added: list[sa.Column[Any]] = [] if before else [_email_key(nullable=not at_0004)]
    added += [] if before else [_credentials_version()]
    return sa.Table(
        "users",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("hashed_password", sa.String(length=255), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        *added,
        *([sa.Index("ix_users_email", "email", unique=True)] if before else []),
        *([sa.UniqueConstraint("email_key", name="uq_users_email_key")] if at_0004 else []),
        sqlite_autoincrement=True,
    )


def _email_key(*, nullable: bool) -> sa.Column[str]:
    return sa.Column("email_key", sa.String(length=320), nullable=nullable)


def _credentials_version() -> sa.Column[int]:
    return sa.Column("credentials_version", sa.Integer(), server_default="1", nullable=False)


def _rebuild_on_sqlite(before: sa.Table) -> dict[str, Any]:
    """SQLite rebuilds the table to change it: from ``before`` (nothing reflected, so that
    its id stays AUTOINCREMENT); PostgreSQL gets plain ALTERs."""
    if op.get_context().dialect.name != "sqlite":
        return {}
    return {
        "recreate": "always",
        "copy_from": before,
        "table_kwargs": {"sqlite_autoincrement": True},
    }


def _canonical_keys() -> dict[int, str]:
    """Every user's canonical e-mail, by id; refuses, before anything changes, addresses
    that differ only in letter case or surrounding spaces, naming the users."""
    rows = op.get_bind().execute(sa.text("SELECT id, email FROM users ORDER BY id")).all()
    keys = {user_id: canonical_email(email) for user_id, email in rows}
    owners: defaultdict[str, list[int]] = defaultdict(list)
    for user_id, key in keys.items():
        owners[key].append(user_id)
    clashes = [ids for ids in owners.values() if len(ids) > 1]
    if clashes:
        named = "; ".join("users " + ", ".join(map(str, ids)) for ids in clashes)
        raise CommandError(
            "these accounts share an e-mail address that differs only in letter case or "
            f"spaces: {named}. Merge or delete all but one of each (or change their "
            "addresses), then upgrade again; nothing was changed"
        )
    return keys


def upgrade() -> None:
    keys = {} if op.get_context().as_sql else _canonical_keys()
    with op.batch_alter_table("users", **_rebuild_on_sqlite(_users("0003"))) as batch_op:
        batch_op.add_column(_email_key(nullable=True))
        batch_op.add_column(_credentials_version())
        batch_op.drop_index("ix_users_email")
    if keys:
        op.get_bind().execute(
            sa.text("UPDATE users SET email_key = :key WHERE id = :id"),
            [{"id": user_id, "key": key} for user_id, key in keys.items()],
        )
    if op.get_context().as_sql:
        op.execute("UPDATE users SET email_key = lower(trim(email))")
    with op.batch_alter_table("users", **_rebuild_on_sqlite(_users("filling"))) as batch_op:
        batch_op.alter_column("email_key", existing_type=sa.String(length=320), nullable=False)
        batch_op.create_unique_constraint("uq_users_email_key", ["email_key"])

    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_auth_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_auth_sessions_user_id"), "auth_sessions", ["user_id"], unique=False)
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("retired", sa.Boolean(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["auth_sessions.id"],
            name=op.f("fk_refresh_tokens_session_id_auth_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_tokens")),
    )
    op.create_index(
        op.f("ix_refresh_tokens_expires_at"), "refresh_tokens", ["expires_at"], unique=False
    )
    op.create_index(
        op.f("ix_refresh_tokens_session_id"), "refresh_tokens", ["session_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_refresh_tokens_session_id"), table_name="refresh_tokens")
    op.drop_index(op.f("ix_refresh_tokens_expires_at"), table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index(op.f("ix_auth_sessions_user_id"), table_name="auth_sessions")
    op.drop_table("auth_sessions")
    with op.batch_alter_table("users", **_rebuild_on_sqlite(_users("0004"))) as batch_op:
        batch_op.drop_constraint("uq_users_email_key", type_="unique")
        batch_op.drop_column("credentials_version")
        batch_op.drop_column("email_key")
        batch_op.create_index("ix_users_email", ["email"], unique=True)
