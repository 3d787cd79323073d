"""Who is calling: login with e-mail and password, refresh and logout, the user behind a
bearer token, and the current password that a change of credentials needs."""

from typing import NamedTuple

from pydantic import MISSING, Secret
from sqlalchemy.orm import Session

from app.auth.credentials import Passwords, Tokens
from app.auth.sessions import SessionStore
from app.auth.throttle import LoginThrottle
from app.exceptions import (
    CurrentPasswordError,
    InactiveUserError,
    IncorrectLoginError,
    LoginThrottledError,
    NotAuthenticatedError,
)
from app.services import UserService
from app.units.reader import Reader
from app.units.writer import Writer

__all__ = ["Authenticator", "TokenPair"]


class TokenPair(NamedTuple):
    access_token: str
    refresh_token: str
    expires_in: int


class Authenticator:
    """OAuth2's password and refresh grants and bearer tokens over the users table; logins
    go through the throttle. Only an app created with ``AUTH_ENABLED`` asks it anything."""

    def __init__(
        self,
        read: Reader,
        write: Writer,
        users: UserService,
        passwords: Passwords,
        tokens: Tokens,
        *,
        throttle: LoginThrottle,
        sessions: SessionStore,
    ) -> None:
        self._read, self._write = read, write
        self._users, self._passwords, self._tokens = users, passwords, tokens
        self._throttle, self._sessions = throttle, sessions

    async def login(self, email: str, password: Secret[str], address: str) -> TokenPair:
        """A new session's tokens; the same error, in the same time, for an unknown e-mail
        and a wrong password. Too many attempts for the e-mail or from the client
        ``address``: ``LoginThrottledError``, before any password is checked."""
        retry_after = await self._write(self._throttle.admit, email, address)
        if retry_after is not None:
            raise LoginThrottledError(retry_after)
        user = await self._read(self._users.get_by_email, email)
        matches, new_hash = await self._passwords.verify(
            password, user.hashed_password if user is not None else None
        )
        if user is None or not matches:
            raise IncorrectLoginError
        if new_hash is not None:
            await self._write(self._users.set_password_hash, user.id, new_hash)
        if not user.is_active:
            raise InactiveUserError
        refresh = self._tokens.new_refresh_token()
        session_id = await self._write(self._started, email, user.id, refresh)
        return self._pair(user.id, user.credentials_version, session_id, refresh)

    async def refresh(self, refresh_token: Secret[str]) -> TokenPair:
        """New tokens for a refresh token, which is retired; one used again ends its session."""
        new = self._tokens.new_refresh_token()
        renewal = await self._write(self._sessions.renew, refresh_token.get_secret_value(), new)
        if renewal is None:
            raise NotAuthenticatedError("Invalid refresh token")
        return self._pair(renewal.user_id, renewal.version, renewal.session_id, new)

    async def logout(self, token: str) -> None:
        """End the session the (valid) access token belongs to: its refresh tokens and every
        access token issued in it."""
        claims = self._tokens.claims(token)
        if claims.session_id is not None:
            await self._write(self._sessions.end, claims.session_id, claims.user_id)

    async def caller(self, token: str | None) -> int:
        """The id of the active user the token names, while its session lasts: one query,
        on the row the check needs anyway."""
        if token is None:
            raise NotAuthenticatedError("Not authenticated")
        user_id = await self._read(self._users.get_active, self._tokens.claims(token))
        if user_id is None:
            raise NotAuthenticatedError("Could not validate credentials")
        return user_id

    async def confirm_password(
        self, user_id: int, password: Secret[str] | MISSING, address: str
    ) -> None:
        """``CurrentPasswordError`` unless ``password`` is the user's; attempts count as
        logins do (``LoginThrottledError`` past the limits)."""
        if password is MISSING:
            raise CurrentPasswordError(
                "current_password is required to change the password or the e-mail"
            )
        user = await self._read(self._users.get_credentials, user_id)
        if user is None:
            raise NotAuthenticatedError("Could not validate credentials")
        retry_after = await self._write(self._throttle.admit, user.email, address)
        if retry_after is not None:
            raise LoginThrottledError(retry_after)
        matches, _ = await self._passwords.verify(password, user.hashed_password)
        if not matches:
            raise CurrentPasswordError("current_password is not the account's password")
        await self._write(self._throttle.succeeded, user.email)

    def _started(self, session: Session, email: str, user_id: int, refresh: str) -> int:
        self._throttle.succeeded(session, email)
        return self._sessions.start(session, user_id, refresh)

    def _pair(self, user_id: int, version: int, session_id: int, refresh: str) -> TokenPair:
        access = self._tokens.issue(user_id, version=version, session_id=session_id)
        return TokenPair(access, refresh, self._tokens.expires_in)
