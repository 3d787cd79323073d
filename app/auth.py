"""Who is calling: login with e-mail and password, and the user behind a bearer token."""

from pydantic import Secret

from app.exceptions import InactiveUserError, IncorrectLoginError, NotAuthenticatedError
from app.models import User
from app.security import Passwords, Tokens
from app.services import UserService
from app.transactions import Reader, Writer

__all__ = ["Authenticator"]


class Authenticator:
    """OAuth2's password flow and bearer tokens over the users table.

    With ``enabled`` false (``AUTH_ENABLED``) every request is anonymous and allowed, as in
    the tutorial.
    """

    def __init__(
        self,
        read: Reader,
        write: Writer,
        users: UserService,
        passwords: Passwords,
        tokens: Tokens,
        *,
        enabled: bool,
    ) -> None:
        self.enabled = enabled
        self._read, self._write = read, write
        self._users, self._passwords, self._tokens = users, passwords, tokens

    async def login(self, email: str, password: Secret[str]) -> str:
        """An access token for the user; the same error, in the same time, for an unknown
        e-mail and a wrong password."""
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
        return self._tokens.issue(user.id)

    async def caller(self, token: str | None) -> User | None:
        """The active user the token names; ``None`` when auth is off."""
        if not self.enabled:
            return None
        if token is None:
            raise NotAuthenticatedError("Not authenticated")
        user = await self._read(self._users.get_active, self._tokens.user_id(token))
        if user is None:
            raise NotAuthenticatedError("Could not validate credentials")
        return user
