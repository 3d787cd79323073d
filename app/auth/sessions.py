"""Login sessions in the database, so that every worker and instance sees one state: each
login starts one; its refresh tokens rotate at every use, and one used twice ends it (OAuth
2.0 Security BCP, RFC 9700, section 4.14.2)."""

import time
from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy import CursorResult, delete, exists, insert, select, update
from sqlalchemy.orm import Session

from app.auth.credentials import refresh_token_hash
from app.models import AuthSession, RefreshToken, User

__all__ = ["Renewal", "SessionStore"]


class Renewal(NamedTuple):
    """A session that a refresh token renewed: whose, at which credentials version."""

    user_id: int
    version: int
    session_id: int


_ADD_SESSION = insert(AuthSession).returning(AuthSession.id)
_REFRESH = (
    select(
        RefreshToken.session_id,
        RefreshToken.expires_at,
        RefreshToken.retired,
        User.id,
        User.credentials_version,
        User.is_active,
    )
    .join(AuthSession, AuthSession.id == RefreshToken.session_id)
    .join(User, User.id == AuthSession.user_id)
)


class SessionStore:
    """Sessions and their refresh tokens. Each method is one unit of work for ``Write``; a
    refusal is returned (``None``), not raised, so that what it ended is committed."""

    def __init__(self, refresh_lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self._lifetime = refresh_lifetime
        self._clock = clock

    def start(self, session: Session, user_id: int, refresh_token: str) -> int:
        """A new session of the user, with ``refresh_token`` as its first; its id."""
        now = self._clock()
        # Opportunistic cleanup: an expired refresh token renews nothing, and a session with
        # none left can only have expired access tokens.
        session.execute(delete(RefreshToken).where(RefreshToken.expires_at <= now))
        session.execute(
            delete(AuthSession).where(
                AuthSession.created_at <= now - self._lifetime,
                ~exists().where(RefreshToken.session_id == AuthSession.id),
            )
        )
        session_id: int = session.execute(
            _ADD_SESSION, {"user_id": user_id, "created_at": now}
        ).scalar_one()
        self._add(session, session_id, refresh_token, now)
        return session_id

    def renew(self, session: Session, refresh_token: str, new_token: str) -> Renewal | None:
        """Retire ``refresh_token`` for ``new_token``. ``None`` when it renews nothing:
        unknown, expired, its user inactive or its credentials changed; or already used,
        which ends its whole session (the newest token too): either the client or a thief
        holds a copy, and the server cannot tell which."""
        now = self._clock()
        token_hash = refresh_token_hash(refresh_token)
        row = session.execute(_REFRESH.where(RefreshToken.token_hash == token_hash)).first()
        if row is None:
            return None
        session_id, expires_at, retired, user_id, version, is_active = row
        if retired:
            self.end(session, session_id)
            return None
        if expires_at <= now or not is_active:
            return None
        # Conditional: of two workers renewing with the same token at once, one retires it;
        # the other sees a reuse.
        retiring = update(RefreshToken).where(
            RefreshToken.token_hash == token_hash, RefreshToken.retired.is_(False)
        )
        retired_now: CursorResult[tuple[()]] = session.execute(retiring.values(retired=True))  # type: ignore[assignment]
        if retired_now.rowcount != 1:
            self.end(session, session_id)
            return None
        self._add(session, session_id, new_token, now)
        return Renewal(user_id, version, session_id)

    def end(self, session: Session, session_id: int, user_id: int | None = None) -> None:
        """End the session (its refresh tokens go with it); with ``user_id``, only if it is
        that user's."""
        ending = delete(AuthSession).where(AuthSession.id == session_id)
        if user_id is not None:
            ending = ending.where(AuthSession.user_id == user_id)
        session.execute(ending)

    def _add(self, session: Session, session_id: int, token: str, now: float) -> None:
        session.add(
            RefreshToken(
                token_hash=refresh_token_hash(token),
                session_id=session_id,
                expires_at=now + self._lifetime,
                retired=False,
            )
        )
        session.flush()
