"""What services share about rows: the first page's bound, and locking an owned row."""

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from app.exceptions import PermissionDeniedError
from app.models import Owned
from app.web.etags import check_if_match

__all__ = ["FIRST", "locked"]

FIRST = 0
"""``after_id`` when the client gave none: ids start at 1."""

Row = TypeVar("Row", bound=Owned)


def locked(
    session: Session,
    model: type[Row],
    row_id: int,
    if_match: str | None,
    caller_id: int | None,
    *,
    tag: Callable[[Session, Row], int | str] | None = None,
) -> Row | None:
    """The row, locked for this transaction (``FOR UPDATE`` on PostgreSQL; SQLite writes one
    at a time anyway), after the checks: the caller (when auth is on) must own it, and
    ``If-Match`` must name its version (or ``tag(session, row)``, when its representation
    holds more than the row)."""
    row = session.get(model, row_id, with_for_update=True)
    if row is None:
        return None
    if caller_id is not None and caller_id != row.owned_by:
        raise PermissionDeniedError
    if if_match is not None:
        check_if_match(if_match, tag(session, row) if tag is not None else row.version)
    return row
