"""Passwords and tokens: slow hashing off the event loop, signed short-lived JWTs, opaque
refresh tokens."""

import datetime as dt
import hashlib
import secrets
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

import anyio.to_thread
import jwt
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pydantic import Secret, SecretStr

from app.config import Settings
from app.exceptions import NotAuthenticatedError

__all__ = ["ALGORITHM", "MAX_ID", "AccessClaims", "Passwords", "Tokens", "refresh_token_hash"]

ALGORITHM = "HS256"
MAX_ID = 2**63 - 1
"""The largest id a database column holds (BIGINT); a claim beyond it names nobody."""

_DUMMY_HASHES: WeakKeyDictionary[PasswordHash, str] = WeakKeyDictionary()


class Passwords:
    """Argon2id (pwdlib's recommendation), ~0.1 s of CPU a call: always in a worker thread."""

    def __init__(self, hasher: PasswordHash) -> None:
        self._hasher = hasher

    async def hash(self, password: Secret[str]) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, password.get_secret_value())

    async def verify(self, password: Secret[str], hashed: str | None) -> tuple[bool, str | None]:
        """``(matches, new_hash)``: ``new_hash`` is set when ``hashed`` used outdated
        parameters and should be replaced. With no ``hashed`` (no such user) a dummy hash is
        checked instead, so that an unknown e-mail costs as much time as a wrong password."""
        return await anyio.to_thread.run_sync(self._verify, password.get_secret_value(), hashed)

    def _verify(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        if hashed is None:
            self._hasher.verify(password, self._dummy())
            return False, None
        try:
            return self._hasher.verify_and_update(password, hashed)
        except UnknownHashError:  # a hash no configured hasher reads matches nothing
            return False, None

    def _dummy(self) -> str:
        # Kept per hasher, not per Passwords (a factory's product): computing it costs as
        # much as the check it stands in for. A race computes it twice, harmlessly.
        dummy = _DUMMY_HASHES.get(self._hasher)
        if dummy is None:
            dummy = _DUMMY_HASHES[self._hasher] = self._hasher.hash("not the password of anyone")
        return dummy


class AccessClaims(NamedTuple):
    """What a valid access token says: whose it is, at which credentials version, and the
    session it belongs to (``None`` only for tokens minted outside a login, as in tests)."""

    user_id: int
    version: int
    session_id: int | None


class Tokens:
    """Access tokens: a JWT signed with ``SECRET_KEY``: ``sub`` = the user id, ``ver`` = the
    user's credentials version, ``sid`` = the login session, ``exp``. Refresh tokens: random
    and opaque; only their hash is stored."""

    def __init__(
        self, secret: SecretStr | None, expire_minutes: int, refresh_expire_days: int = 30
    ) -> None:
        self._secret = secret
        self._lifetime = dt.timedelta(minutes=expire_minutes)
        self.refresh_lifetime = dt.timedelta(days=refresh_expire_days).total_seconds()

    @property
    def expires_in(self) -> int:
        """An access token's lifetime in seconds (the token response's ``expires_in``)."""
        return int(self._lifetime.total_seconds())

    @classmethod
    def from_settings(cls, s: Settings) -> "Tokens":
        """``SECRET_KEY``, ``ACCESS_TOKEN_EXPIRE_MINUTES`` and ``REFRESH_TOKEN_EXPIRE_DAYS``."""
        return cls(s.SECRET_KEY, s.ACCESS_TOKEN_EXPIRE_MINUTES, s.REFRESH_TOKEN_EXPIRE_DAYS)

    def issue(
        self,
        user_id: int,
        *,
        version: int = 1,
        session_id: int | None = None,
        now: dt.datetime | None = None,
    ) -> str:
        issued = now or dt.datetime.now(dt.UTC)
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "ver": version,
            "iat": issued,
            "exp": issued + self._lifetime,
        }
        if session_id is not None:
            claims["sid"] = session_id
        return jwt.encode(claims, self._key(), algorithm=ALGORITHM)

    def claims(self, token: str) -> AccessClaims:
        """What a valid token says; ``NotAuthenticatedError`` for any other token: forged,
        expired, ``alg: none``, or with a claim missing, of another type or out of range."""
        try:
            claims = jwt.decode(
                token,
                self._key(),
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub", "ver"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticatedError("Token has expired") from None
        except jwt.InvalidTokenError:
            raise NotAuthenticatedError("Could not validate credentials") from None
        sub, version, session = claims["sub"], claims["ver"], claims.get("sid")
        if not (
            isinstance(sub, str)
            and sub.isascii()
            and sub.isdecimal()
            and len(sub) <= 19
            and _in_range(int(sub))
            and _in_range(version)
            and (session is None or _in_range(session))
        ):
            raise NotAuthenticatedError("Could not validate credentials")
        return AccessClaims(int(sub), version, session)

    def user_id(self, token: str) -> int:
        """The user a valid token names; ``NotAuthenticatedError`` for any other token."""
        return self.claims(token).user_id

    @staticmethod
    def new_refresh_token() -> str:
        """A refresh token: 256 random bits, URL-safe."""
        return secrets.token_urlsafe(32)

    def _key(self) -> str:
        if self._secret is None:
            raise RuntimeError("SECRET_KEY is not set: tokens need it (AUTH_ENABLED=true)")
        return self._secret.get_secret_value()


def refresh_token_hash(token: str) -> str:
    """What the database keeps of a refresh token: its SHA-256 (the token is 256 random bits,
    so a fast hash is enough: there is nothing to guess)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _in_range(value: object) -> bool:
    return type(value) is int and 1 <= value <= MAX_ID
