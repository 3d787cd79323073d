"""The app's own ``Session`` class; its listeners hang on it, never on SQLAlchemy's ``Session``
(so a library or script in the same process that uses plain sessions is left alone)."""

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, UOWTransaction

from app.exceptions import WriteInReadError

__all__ = ["READ_ONLY", "AppSession"]

READ_ONLY = "app.read_only"
"""``Session.info`` key of sessions that a ``Reader`` runs: flushing one is an error."""


class AppSession(Session):
    """What the container's session factories make: a ``Session`` that refuses to flush
    inside a read (``info[READ_ONLY]``)."""


@event.listens_for(AppSession, "before_flush")
def _refuse_flush_in_reads(session: Session, flush: UOWTransaction, instances: Any) -> None:
    if session.info.get(READ_ONLY):
        raise WriteInReadError(
            f"tried to flush {len(session.new)} new, {len(session.dirty)} changed and "
            f"{len(session.deleted)} deleted objects in a read-only transaction; use Write"
        )
