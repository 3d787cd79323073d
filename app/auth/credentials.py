"""Passwords and access tokens: slow hashing off the event loop, signed short-lived JWTs."""

import datetime as dt
from weakref import WeakKeyDictionary

import anyio.to_thread
import jwt
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pydantic import Secret, SecretStr

from app.config import Settings
from app.exceptions import NotAuthenticatedError

__all__ = ["ALGORITHM", "Passwords", "Tokens"]

ALGORITHM = "HS256"

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


class Tokens:
    """Bearer tokens: a JWT signed with ``SECRET_KEY``, ``sub`` = the user id, with ``exp``."""

    def __init__(self, secret: SecretStr | None, expire_minutes: int) -> None:
        self._secret = secret
        self._lifetime = dt.timedelta(minutes=expire_minutes)

    @classmethod
    def from_settings(cls, s: Settings) -> "Tokens":
        """``SECRET_KEY`` and ``ACCESS_TOKEN_EXPIRE_MINUTES``."""
        return cls(s.SECRET_KEY, s.ACCESS_TOKEN_EXPIRE_MINUTES)

    def issue(self, user_id: int, *, now: dt.datetime | None = None) -> str:
        issued = now or dt.datetime.now(dt.UTC)
        claims = {"sub": str(user_id), "iat": issued, "exp": issued + self._lifetime}
        return jwt.encode(claims, self._key(), algorithm=ALGORITHM)

    def user_id(self, token: str) -> int:
        """The user a valid token names; ``NotAuthenticatedError`` for any other token."""
        try:
            claims = jwt.decode(
                token, self._key(), algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
            )
            return int(claims["sub"])
        except jwt.ExpiredSignatureError:
            raise NotAuthenticatedError("Token has expired") from None
        except (jwt.InvalidTokenError, ValueError):
            raise NotAuthenticatedError("Could not validate credentials") from None

    def _key(self) -> str:
        if self._secret is None:
            raise RuntimeError("SECRET_KEY is not set: tokens need it (AUTH_ENABLED=true)")
        return self._secret.get_secret_value()
