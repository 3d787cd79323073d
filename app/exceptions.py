"""Every exception the app raises on purpose, and the database failures it answers with a
503; imports nothing of the app, so raising one drags in nothing.

``app.web.errors`` turns them into HTTP answers.
"""

from sqlalchemy import exc

__all__ = [
    "DATABASE_FAILURES",
    "REFUSALS",
    "RETRY_AFTER_SECONDS",
    "CurrentPasswordError",
    "DatabaseBusyError",
    "EmailAlreadyRegisteredError",
    "IdempotencyKeyInProgressError",
    "IdempotencyKeyReusedError",
    "IdempotentReplay",
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

DATABASE_FAILURES: tuple[type[Exception], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    # What psycopg raises when PgBouncer loses its server during a COMMIT ("received 2
    # results from command 'COMMIT'"), and PostgreSQL's own XX000: the database, not the
    # request, is at fault.
    exc.InternalError,
    exc.TimeoutError,
    exc.DisconnectionError,
)
"""Errors that say a database is down or unreachable, not that the work is wrong: a 503 for
the request, and a read that meets one on a replica runs again elsewhere."""
RETRY_AFTER_SECONDS = "1"
"""The ``Retry-After`` of every 503: the database or the process is busy, not broken."""


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


class CurrentPasswordError(Exception):
    """A change of password or e-mail without the right ``current_password``; the message
    says which, for the client."""


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


class IdempotentReplay(Exception):  # noqa: N818  (an answer, not an error)
    """The request repeats one already answered under its ``Idempotency-Key``: send the
    stored answer again (``app.web.errors`` adds ``Idempotent-Replayed: true``)."""

    def __init__(self, status_code: int, body: bytes, etag: str | None) -> None:
        super().__init__(f"replay of a stored {status_code} answer")
        self.status_code = status_code
        self.body = body
        self.etag = etag


class IdempotencyKeyInProgressError(Exception):
    """A request with the same ``Idempotency-Key`` is still running (its transaction held the
    key longer than DB_QUEUE_TIMEOUT): 409, retry later."""


class IdempotencyKeyReusedError(Exception):
    """The ``Idempotency-Key`` was used for a different request (method, path, body or
    caller) within its lifetime: 422, nothing done."""


REFUSALS: tuple[type[Exception], ...] = (
    CurrentPasswordError,
    EmailAlreadyRegisteredError,
    IdempotencyKeyInProgressError,
    IdempotencyKeyReusedError,
    InactiveUserError,
    IncorrectLoginError,
    LoginThrottledError,
    NotAuthenticatedError,
    PermissionDeniedError,
    PreconditionFailedError,
)
"""What the app raises on purpose and ``app.web.errors`` answers with a 4xx: the client's
doing, not a failure (a traced unit that raises one keeps an ok status)."""
