"""Login throttling, counted in the database so that every worker and instance shares one
allowance: failures per e-mail, attempts per client address, in fixed windows."""

import hashlib
import hmac
import math
import time
from collections.abc import Callable

from pydantic import SecretStr
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.urls import backend
from app.emails import canonical_email
from app.models import LoginCounter

__all__ = ["ADDRESS_WINDOW_SECONDS", "LoginThrottle"]

ADDRESS_WINDOW_SECONDS = 60


class LoginThrottle:
    """An e-mail may fail ``max_failures`` times within ``failure_window`` seconds of its
    first failure; a client address may try ``max_attempts_per_minute`` logins a minute.

    Each attempt is counted before its password is checked, as a failure until it succeeds,
    so concurrent attempts cannot slip past the count, whatever worker serves them; a
    successful login clears the e-mail's count. Unknown and known e-mails are counted alike,
    and a refusal comes before any lookup: it says nothing about whether an e-mail exists.
    Each method is one short write transaction (``Write``): SQLite runs them one at a time,
    PostgreSQL's ``INSERT ... ON CONFLICT DO UPDATE`` increments atomically.
    """

    def __init__(
        self,
        secret: SecretStr | None,
        *,
        max_failures: int,
        failure_window: int,
        max_attempts_per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.max_attempts_per_minute = max_attempts_per_minute
        self._clock = clock

    @classmethod
    def from_settings(cls, s: Settings) -> "LoginThrottle":
        """``SECRET_KEY`` and the ``LOGIN_*`` settings."""
        return cls(
            s.SECRET_KEY,
            max_failures=s.LOGIN_MAX_FAILURES,
            failure_window=s.LOGIN_FAILURE_WINDOW_SECONDS,
            max_attempts_per_minute=s.LOGIN_MAX_ATTEMPTS_PER_MINUTE,
        )

    def admit(self, session: Session, email: str, address: str) -> int | None:
        """Count a login attempt; ``None`` when it may go ahead, else the seconds to wait.

        The refusal is returned, not raised, so that the counts it made are committed."""
        now = self._clock()
        # Opportunistic cleanup: a window that has ended counts nothing.
        session.execute(delete(LoginCounter).where(LoginCounter.expires_at <= now))
        hits, ends = self._hit(session, self._key("address", address), now, ADDRESS_WINDOW_SECONDS)
        if hits <= self.max_attempts_per_minute:
            hits, ends = self._hit(session, self._key("email", email), now, self.failure_window)
            if hits <= self.max_failures:
                return None
        return max(1, math.ceil(ends - now))

    def succeeded(self, session: Session, email: str) -> None:
        """Forget the e-mail's failures: its owner knows the password."""
        session.execute(delete(LoginCounter).where(LoginCounter.key == self._key("email", email)))

    def _hit(self, session: Session, key: str, now: float, window: int) -> tuple[int, float]:
        """One more hit on ``key``'s counter, which starts a window if it has none: its hits
        and the window's end, read in the same statement."""
        insert = postgresql.insert if backend(session.get_bind()) == "postgresql" else sqlite.insert
        statement = (
            insert(LoginCounter)
            .values(key=key, hits=1, expires_at=now + window)
            .on_conflict_do_update(
                index_elements=[LoginCounter.key], set_={"hits": LoginCounter.hits + 1}
            )
            .returning(LoginCounter.hits, LoginCounter.expires_at)
        )
        hits, expires_at = session.execute(statement).one()
        return hits, expires_at

    def _key(self, kind: str, value: str) -> str:
        if self._secret is None:
            raise RuntimeError("SECRET_KEY is not set: the login throttle needs it")
        # The e-mail's one canonical form (an address's too: spaces and case mean nothing
        # there either); the HMAC keeps the table free of them.
        message = f"{kind}:{canonical_email(value)}".encode()
        secret = self._secret.get_secret_value().encode()
        return hmac.new(secret, message, hashlib.sha256).hexdigest()
