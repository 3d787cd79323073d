"""Who is calling: login with e-mail and password, and the user behind a bearer token."""

from pydantic import Secret

from app.auth.credentials import Passwords, Tokens
from app.auth.throttle import LoginThrottle
from app.exceptions import (
    InactiveUserError,
    IncorrectLoginError,
    LoginThrottledError,
    NotAuthenticatedError,
)
from app.services import UserService
from app.units.reader import Reader
from app.units.writer import Writer

__all__ = ["Authenticator"]


class Authenticator:
    """OAuth2's password flow and bearer tokens over the users table; logins go through the
    throttle. Only an app created with ``AUTH_ENABLED`` asks it anything."""

    def __init__(
        self,
        read: Reader,
        write: Writer,
        users: UserService,
        passwords: Passwords,
        tokens: Tokens,
        *,
        throttle: LoginThrottle,
    ) -> None:
        self._read, self._write = read, write
        self._users, self._passwords, self._tokens = users, passwords, tokens
        self._throttle = throttle

    async def login(self, email: str, password: Secret[str], address: str) -> str:
        """An access token for the user; the same error, in the same time, for an unknown
        e-mail and a wrong password. Too many attempts for the e-mail or from the client
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
        await self._write(self._throttle.succeeded, email)
        return self._tokens.issue(user.id)

    async def caller(self, token: str | None) -> int:
        """The id of the active user the token names."""
        if token is None:
            raise NotAuthenticatedError("Not authenticated")
        user_id = await self._read(self._users.get_active, self._tokens.user_id(token))
        if user_id is None:
            raise NotAuthenticatedError("Could not validate credentials")
        return user_id
