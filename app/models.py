"""ORM models: users and the items they own; login sessions and their refresh tokens; the
login throttle's counters; the responses stored under an ``Idempotency-Key``; the outbox's
events."""

from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, text
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, declared_attr, mapped_column, relationship, validates

from app.base import Base
from app.emails import canonical_email

__all__ = [
    "AuthSession",
    "IdempotencyKey",
    "Item",
    "LoginCounter",
    "OutboxEvent",
    "Owned",
    "RefreshToken",
    "User",
]

# Ids are never reused (SQLite would hand a deleted row's id to the next insert): a token or
# an ETag that names a deleted row must not come to name a new one.
_NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


def _email_key(context: DefaultExecutionContext) -> str:
    email: str = context.get_current_parameters()["email"]  # type: ignore[no-untyped-call]
    return canonical_email(email)


class Owned:
    """A row that one user may change (with auth on) and whose version is its ETag."""

    version: Mapped[int] = mapped_column(server_default="1")

    # Every UPDATE and DELETE checks and bumps the version: the ETag, and no lost updates.
    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:  # noqa: N805  (called with the class)
        return {"version_id_col": cls.version}

    @property
    def owned_by(self) -> int | None:
        """The id of the user who may change the row (``None``: nobody)."""
        raise NotImplementedError


class User(Owned, Base):
    __tablename__ = "users"
    __table_args__ = _NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    """As the user typed it (trimmed; the domain lower-cased)."""
    # sort_order: after the mixin's version, where migration 0004 added them.
    email_key: Mapped[str] = mapped_column(
        String(320), unique=True, default=_email_key, sort_order=1
    )
    """``canonical_email(email)``: one account per address, whatever its letter case."""
    hashed_password: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True, server_default="1")
    credentials_version: Mapped[int] = mapped_column(server_default="1", sort_order=1)
    """Carried in every access token; a password change or a deactivation bumps it, and
    every token issued before stops working (checked on the row the token check loads)."""

    items: Mapped[list["Item"]] = relationship(
        back_populates="owner",
        order_by="Item.id",
        lazy="raise_on_sql",
        # The database deletes a user's items (ON DELETE CASCADE): the ORM need not load them.
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    @validates("email")
    def _keep_email_key(self, key: str, email: str) -> str:
        self.email_key = canonical_email(email)
        return email

    @property
    def owned_by(self) -> int:
        return self.id  # a user owns itself


class Item(Owned, Base):
    __tablename__ = "items"
    __table_args__ = _NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), index=True)
    description: Mapped[str | None] = mapped_column(String(2000))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)

    owner: Mapped[User] = relationship(back_populates="items", lazy="raise_on_sql")

    @property
    def owned_by(self) -> int:
        return self.owner_id


class LoginCounter(Base):
    """Login attempts for one e-mail or one client address in a fixed window (app.auth.throttle),
    keyed by an HMAC of it: the table never holds the e-mail or the address itself."""

    __tablename__ = "login_counters"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    hits: Mapped[int]
    expires_at: Mapped[float] = mapped_column(index=True)
    """When the window ends, in seconds since the epoch."""


class AuthSession(Base):
    """One login: its refresh tokens form a family (rotation, reuse detection), and its
    access tokens name it (``sid``). Deleting the row ends the session."""

    __tablename__ = "auth_sessions"
    __table_args__ = _NEVER_REUSE_IDS  # a logged-out session's id never names a new one

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float]
    """Seconds since the epoch."""


class RefreshToken(Base):
    """A refresh token of a session, by the SHA-256 of its value: the table never holds a
    usable token. A used one stays, ``retired``, until it expires: presented again, it gives
    the theft away and ends its session."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    expires_at: Mapped[float] = mapped_column(index=True)
    """Seconds since the epoch."""
    retired: Mapped[bool] = mapped_column(default=False, server_default="0")


class OutboxEvent(Base):
    """An event of the transactional outbox (``app.outbox``, docs/outbox.md): written in the
    transaction of the change it reports, delivered at least once by ``app worker``.

    ``due_at`` is when a worker may next claim it: its creation, the end of a worker's lease
    while one delivers it, or the time of its next retry; None once it is delivered or dead.
    """

    __tablename__ = "outbox_events"
    # Dead events, counted and listed: a partial index, which the inserts (never dead) skip.
    __table_args__ = (
        Index(
            "ix_outbox_events_dead_at",
            "dead_at",
            sqlite_where=text("dead_at IS NOT NULL"),
            postgresql_where=text("dead_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """``msg_`` + a ULID: the ``webhook-id`` receivers deduplicate on."""
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)
    """The JSON body sent, exactly: ``{"type", "timestamp", "data"}``."""
    traceparent: Mapped[str | None] = mapped_column(String(55))
    created_at: Mapped[float]
    """Seconds since the epoch, as every time in this table."""
    due_at: Mapped[float | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(server_default="0")
    claim: Mapped[str | None] = mapped_column(String(32))
    """The lease's token: only the worker holding it records the outcome."""
    done: Mapped[str | None] = mapped_column(Text)
    """JSON list of the handlers (webhook destinations) that succeeded: a retry skips them."""
    delivered_at: Mapped[float | None]
    """Delivered ones are pruned by id (ids sort by creation time) after the retention."""
    dead_at: Mapped[float | None]
    last_error: Mapped[str | None] = mapped_column(String(500))


class IdempotencyKey(Base):
    """A request's ``Idempotency-Key`` and the response it got (``app.units.idempotency``),
    written in the transaction of the change itself. Keyed by the SHA-256 of the caller, the
    route and the key: the table never holds the key as the client sent it."""

    __tablename__ = "idempotency_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """A digest of the request (method, path, caller, body): a reuse for another one is a 422."""
    status_code: Mapped[int | None]
    """None only inside the transaction that claimed the key (never seen committed)."""
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    etag: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(index=True)
    """Seconds since the epoch; after it the key is free again (and the row is swept)."""
