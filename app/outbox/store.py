"""The outbox table's statements for the worker and the ``app outbox`` commands: claim due
events under a lease, record each outcome, release, prune, count, list and redrive the dead.

Every method is one short transaction on the engine (Core statements, nothing kept on the
connection between them), so it works the same on SQLite, PostgreSQL and through PgBouncer's
transaction pooling. A claim is one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE
SKIP LOCKED) RETURNING``: on PostgreSQL concurrent workers skip each other's rows; SQLite runs
it under ``BEGIN IMMEDIATE`` (the engine's transactions), one claim at a time.
"""

import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, delete, func, select, update

from app.models import OutboxEvent
from app.outbox.events import event_id_bound

__all__ = ["Attempt", "Claimed", "Outbox", "Outcome", "Stats", "backoff"]

Outcome = Literal["delivered", "retried", "dead", "lost"]
"""``lost``: the lease had ended and another worker had claimed the event meanwhile."""

E = OutboxEvent
_RETURNED = (E.id, E.type, E.payload, E.attempts, E.done, E.created_at, E.traceparent)
_PRUNE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    type: str
    payload: str
    attempts: int
    """Counting this one: a claim counts as an attempt (a worker killed mid-delivery too)."""
    done: frozenset[str]
    created_at: float
    traceparent: str | None = None
    """The span that wrote the event, when traced: its delivery links to it."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """What delivering a claimed event came to."""

    event: Claimed
    done: set[str]
    """The handlers that have succeeded, on this attempt or before."""
    error: str | None
    delay: float
    """Seconds before the next attempt, if this one failed."""


@dataclass(frozen=True, slots=True)
class Stats:
    pending: int
    oldest_created_at: float | None
    dead: int


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before the next attempt after failed attempt ``attempt`` (1, 2, ...):
    ``min(cap, base * 2 ** (attempt - 1))``, of which a random half is jitter."""
    delay: float = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return delay * random.uniform(0.5, 1.0)


class Outbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, limit: int, lease: float) -> tuple[str, list[Claimed]]:
        """Up to ``limit`` due events, oldest due first, leased to a new token for ``lease``
        seconds."""
        now = time.time()
        token = uuid.uuid4().hex
        due = (
            select(E.id)
            .where(E.due_at <= now)
            .order_by(E.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(E)
            .where(E.id.in_(due.scalar_subquery()))
            .values(due_at=now + lease, claim=token, attempts=E.attempts + 1)
            .returning(*_RETURNED)
        )
        with self.engine.begin() as connection:
            rows = connection.execute(statement).all()
        claimed = [
            Claimed(
                r.id,
                r.type,
                r.payload,
                r.attempts,
                frozenset(json.loads(r.done or "[]")),
                r.created_at,
                r.traceparent,
            )
            for r in rows
        ]
        return token, sorted(claimed, key=lambda c: c.id)

    def finish(
        self, token: str, attempts: Sequence[Attempt], *, max_attempts: int
    ) -> list[Outcome]:
        """Record a batch's attempts in one transaction: each delivered (no ``error``), else
        retried after its ``delay`` or, at ``max_attempts``, dead; only where this worker's
        lease still holds (``lost`` otherwise)."""
        now = time.time()
        outcomes: list[Outcome] = []
        with self.engine.begin() as connection:
            for attempt in attempts:
                event, error = attempt.event, attempt.error
                values: dict[str, object] = {
                    "claim": None,
                    "done": json.dumps(sorted(attempt.done)),
                }
                if error is None:
                    outcome: Outcome = "delivered"
                    values |= {"due_at": None, "delivered_at": now, "last_error": None}
                elif event.attempts >= max_attempts:
                    outcome = "dead"
                    values |= {"due_at": None, "dead_at": now, "last_error": error[:500]}
                else:
                    outcome = "retried"
                    values |= {"due_at": now + attempt.delay, "last_error": error[:500]}
                statement = update(E).where(E.id == event.id, E.claim == token).values(**values)
                found = connection.execute(statement).rowcount
                outcomes.append(outcome if found else "lost")
        return outcomes

    def prune(self, retention_seconds: float) -> int:
        """Delete the delivered events made more than ``retention_seconds`` ago (by id: ids
        sort by creation time), a batch per transaction."""
        bound = event_id_bound(time.time() - retention_seconds)
        old = select(E.id).where(E.id < bound, E.delivered_at.is_not(None)).limit(_PRUNE_BATCH)
        statement = delete(E).where(E.id.in_(old.scalar_subquery()))
        pruned = 0
        while True:
            with self.engine.begin() as connection:
                count = connection.execute(statement).rowcount
            pruned += count
            if count < _PRUNE_BATCH:
                return pruned

    def stats(self) -> Stats:
        pending = select(func.count(), func.min(E.created_at)).where(E.due_at.is_not(None))
        dead = select(func.count()).select_from(E).where(E.dead_at.is_not(None))
        with self.engine.connect() as connection:
            count, oldest = connection.execute(pending).one()
            dead_count = connection.scalar(dead) or 0
        return Stats(count, oldest, dead_count)

    def dead(self, limit: int) -> list[tuple[str, str, int, float, str | None]]:
        """(id, type, attempts, dead_at, last_error) of the dead events, oldest first."""
        statement = (
            select(E.id, E.type, E.attempts, E.dead_at, E.last_error)
            .where(E.dead_at.is_not(None))
            .order_by(E.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(statement)]  # type: ignore[misc]

    def redrive(self, ids: Sequence[str] | None) -> int:
        """Make dead events (``ids``, or all) due now with a fresh count of attempts; the
        destinations already served stay served."""
        statement = update(E).where(E.dead_at.is_not(None))
        if ids is not None:
            statement = statement.where(E.id.in_(ids))
        statement = statement.values(dead_at=None, due_at=time.time(), attempts=0)
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount
