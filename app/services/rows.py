"""What services share about rows: the first page's bound, and locking an owned row."""

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
    session: Session, model: type[Row], row_id: int, if_match: str | None, caller_id: int | None
) -> Row | None:
    """The row, locked for this transaction (``FOR UPDATE`` on PostgreSQL; SQLite writes one
    at a time anyway), after the checks: the caller (when auth is on) must own it, and
    ``If-Match`` must name its version."""
    row = session.get(model, row_id, with_for_update=True)
    if row is None:
        return None
    if caller_id is not None and caller_id != row.owned_by:
        raise PermissionDeniedError
    check_if_match(if_match, row.version)
    return row
