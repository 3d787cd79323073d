"""Every exception the app raises on purpose; imports nothing, so raising one drags in nothing.

``app.errors`` turns them into HTTP answers.
"""

__all__ = [
    "DatabaseBusyError",
    "EmailAlreadyRegisteredError",
    "InactiveUserError",
    "IncorrectLoginError",
    "LoginThrottledError",
    "NotAuthenticatedError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "ShuttingDownError",
    "UnversionedDatabaseError",
    "WriteInReadError",
]


class DatabaseBusyError(Exception):
    """No database connection became free within the configured wait."""


class WriteInReadError(RuntimeError):
    """Work run as a read (``Read``) tried to add, change or delete rows: use ``Write``."""


class EmailAlreadyRegisteredError(Exception):
    """A user with this e-mail exists; the unique constraint decided it."""


class NotAuthenticatedError(Exception):
    """The request carries no valid access token (missing, malformed, expired, forged, or
    naming a user that is gone or inactive); the message says which, for the client."""


class IncorrectLoginError(Exception):
    """Wrong e-mail or password; deliberately the same error for both."""


class LoginThrottledError(Exception):
    """Too many logins for this e-mail or from this address; ``retry_after`` is how many
    seconds are left until the window ends."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} seconds")
        self.retry_after = retry_after


class InactiveUserError(Exception):
    """The credentials are right but the account is deactivated."""


class PermissionDeniedError(Exception):
    """The caller may not act on this resource: it is someone else's."""


class PreconditionFailedError(Exception):
    """``If-Match`` names a version the resource no longer has: nothing was changed."""


class UnversionedDatabaseError(RuntimeError):
    """The database has the app's tables but no Alembic revision: create_all made it."""


class ShuttingDownError(Exception):
    """The process is draining after a SIGTERM: readiness fails while requests finish."""
