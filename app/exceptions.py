"""Every exception the app raises on purpose; imports nothing, so raising one drags in nothing.

``app.errors`` turns them into HTTP answers.
"""

__all__ = [
    "DatabaseBusyError",
    "EmailAlreadyRegisteredError",
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


class UnversionedDatabaseError(RuntimeError):
    """The database has the app's tables but no Alembic revision: create_all made it."""


class ShuttingDownError(Exception):
    """The process is draining after a SIGTERM: readiness fails while requests finish."""
