"""Replica routing: which engine a read runs on, and the WAL position a write leaves.

A read runs on a replica that serves reads, taking turns, and on the primary when none
does; a request that must see a WAL position runs on a replica only if it is known to have
replayed it, or says so inside the read's transaction. A write on the primary notes the WAL
position after its commit, for the request's later reads and the client's.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, event, exc
from sqlalchemy.orm import Session

from app.db.session import AppSession
from app.exceptions import DATABASE_FAILURES
from app.observability import tracing
from app.replicas.positions import insert_position, replayed_position
from app.replicas.replica_set import PRIMARY, Replica, ReplicaSet

__all__ = ["ROUTE_REASONS", "committed_position", "run_routed", "track_commit_position"]

T = TypeVar("T")
Check = Callable[[Connection], None]
ReadOn = Callable[[Callable[[], Session], Check | None], T]
"""Runs the read on a session factory, calling the check (if any) inside its transaction."""

_PG_UNDEFINED = "42"
"""SQLSTATE class of undefined tables, columns and functions (and of syntax errors)."""
_COMMITTING = "app.committing"
_COMMITTED_AT = "app.committed_at"
"""``Session.info`` keys: the connection a tracked write commits on, then the primary's WAL
position after that commit."""


class _NotReplayedError(Exception):
    """The replica has not replayed the position the read must see (yet)."""


def run_routed(
    replicas: ReplicaSet,
    position: int | None,
    read_on: ReadOn[T],
    on_primary: Callable[..., T],
    *args: Any,
) -> T:
    """The read on the first replica that may serve it (``read_on(its sessions, check)``),
    else on the primary (``on_primary(*args)``).

    A replica that fails with a database error (``DATABASE_FAILURES``) is skipped from then
    on until its next good check, and the work runs again on the next one, or on the
    primary: reads are idempotent. A read that names a table or column the replica does not
    have (a migration it has not replayed yet) runs again on the primary.

    With tracing on, the read's span says which engine ran it and why (``ROUTE_REASONS``).
    """
    hooks = tracing.hooks
    reason = "no_replica_serves"
    for replica in replicas.candidates(position):
        wait_for = None if position is None or replica.reached(position) else position
        try:
            result = read_on(replica.sessions, _caught_up(replica, wait_for))
        except _NotReplayedError:
            reason = "not_replayed"
            break  # the primary has it
        except DATABASE_FAILURES as error:
            replicas.failed(replica, error)
            if hooks is not None:
                hooks.replica_failed(replica.name, error)
            continue
        except exc.ProgrammingError as error:
            if (getattr(error.orig, "sqlstate", None) or "")[:2] != _PG_UNDEFINED:
                raise
            reason = "undefined_on_replica"
            break  # a migration it has not replayed yet, perhaps: the primary knows
        replicas.served(replica.name)
        if hooks is not None:
            hooks.routed(replica.name, _replica_reason(position, wait_for))
        return result
    result = on_primary(*args)
    replicas.served(PRIMARY)
    if hooks is not None:
        hooks.routed(PRIMARY, reason)
    return result


ROUTE_REASONS = {
    "no_position": "a replica: the request brought no WAL position to see",
    "replayed": "a replica known to have replayed the request's WAL position",
    "replayed_on_check": "a replica that said, inside the read, it had replayed it",
    "not_replayed": "the primary: the replica had not replayed the request's WAL position",
    "no_replica_serves": "the primary: no replica serves reads (down, lagging, or failed)",
    "undefined_on_replica": "the primary: the replica lacks a table or column the read names",
}
"""Why a read ran where it ran, as ``app.db.route_reason`` on its span (docs/tracing.md)."""


def _replica_reason(position: int | None, waited_for: int | None) -> str:
    if position is None:
        return "no_position"
    return "replayed" if waited_for is None else "replayed_on_check"


def _caught_up(replica: Replica, position: int | None) -> Check | None:
    """With ``position``: a check, inside the read's transaction, that ``replica`` has
    replayed that far."""
    if position is None:
        return None

    def check(connection: Connection) -> None:
        replica.saw_replayed(replayed_position(connection))
        if not replica.reached(position):
            raise _NotReplayedError

    return check


def track_commit_position(session: Session) -> None:
    """Read the primary's WAL position once this session's transaction has committed."""
    if not isinstance(session.bind, Connection):  # else it commits nothing
        # _note_commit_position reads it after COMMIT, before it goes back to the pool.
        session.info[_COMMITTING] = session.connection()


def committed_position(session: Session) -> int:
    """The primary's WAL position after the commit ``track_commit_position`` asked for."""
    position: int = session.info.pop(_COMMITTED_AT, 0)
    return position


@event.listens_for(AppSession, "after_commit")
def _note_commit_position(session: Session) -> None:
    # A position read inside the transaction would be before its commit record.
    connection: Connection | None = session.info.pop(_COMMITTING, None)
    if connection is not None:
        session.info[_COMMITTED_AT] = insert_position(connection.connection.driver_connection)
