"""``Idempotency-Key``: a write and the record of its answer in one transaction.

A request that carries a key gets a ``KeyedWrite`` instead of the plain ``Writer``: its one
unit of work runs inside ``IdempotencyKeys.run``, which, in the same transaction, first claims
the key (an ``INSERT ... ON CONFLICT DO NOTHING`` on the key's primary key), then runs the
work, then stores the answer the route makes of its result. A key already answered comes back
as its stored answer instead, and nothing runs. The whole contract: docs/idempotency.md.
"""

import hashlib
import hmac
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, NamedTuple, Protocol, cast

from pydantic import SecretStr
from sqlalchemy import Connection, bindparam, delete, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.exceptions import (
    IdempotencyKeyInProgressError,
    IdempotencyKeyReusedError,
    IdempotentReplay,
)
from app.models import IdempotencyKey
from app.units.base import P, T, sqlstate

__all__ = ["Answer", "IdempotencyKeys", "KeyedRequest", "KeyedWrite", "WriteUnit"]

Answer = tuple[bytes, str | None]
"""What a route answers for a unit's result: the body and the ETag (or None)."""

_LOCK_NOT_AVAILABLE = "55P03"
"""SQLSTATE lock_not_available: lock_timeout ran out."""
_ATTEMPTS = 3
# PostgreSQL: the INSERT waits on the key's unique index while another transaction holds the
# same key, at most lock_timeout, set for this statement only: the CTE sets it before the row
# is inserted (and the wait happens), RETURNING puts the transaction's default back after.
_PG_CLAIM = text(
    "WITH bounded AS (SELECT set_config('lock_timeout', :wait, true))"
    " INSERT INTO idempotency_keys (key_hash, fingerprint, expires_at)"
    " SELECT :key_hash, :fingerprint, :expires_at FROM bounded"
    " ON CONFLICT (key_hash) DO NOTHING"
    " RETURNING set_config('lock_timeout', NULL, true)"
)
_PG_TAKE_OVER = text(
    "UPDATE idempotency_keys SET fingerprint = :fingerprint, expires_at = :expires_at,"
    " status_code = NULL, body = NULL, etag = NULL"
    " WHERE key_hash = :key_hash AND expires_at <= :now"
    " RETURNING set_config('lock_timeout', NULL, true)"
)
_PG_BOUND_WAIT = text("SELECT set_config('lock_timeout', :wait, true)")
# Statements built once (building and caching one per call costs more than running it).
_KEY = IdempotencyKey
_THIS_KEY = _KEY.key_hash == bindparam("this_key")
_SQLITE_CLAIM = (
    sqlite.insert(_KEY)  # VALUES from the parameters' names
    .on_conflict_do_nothing(index_elements=[_KEY.key_hash])
    .returning(_KEY.key_hash)
)
_SQLITE_TAKE_OVER = (
    update(_KEY)
    .where(_THIS_KEY, _KEY.expires_at <= bindparam("now"))
    .values(
        fingerprint=bindparam("new_fingerprint"),
        expires_at=bindparam("new_expires_at"),
        status_code=None,
        body=None,
        etag=None,
    )
)
_FIND = select(_KEY.fingerprint, _KEY.status_code, _KEY.body, _KEY.etag).where(
    _THIS_KEY, _KEY.expires_at > bindparam("now")
)
_STORE = (
    update(_KEY)
    .where(_THIS_KEY)
    .values(status_code=bindparam("status"), body=bindparam("answer"), etag=bindparam("tag"))
)
_FORGET = delete(_KEY).where(_THIS_KEY)
_EXPIRED = (
    select(_KEY.key_hash)
    .where(_KEY.expires_at <= bindparam("now"))
    .order_by(_KEY.expires_at)
    .limit(bindparam("limit"))
)
_SWEEP = delete(_KEY).where(_KEY.key_hash.in_(_EXPIRED))
_PG_SWEEP = delete(_KEY).where(_KEY.key_hash.in_(_EXPIRED.with_for_update(skip_locked=True)))


class WriteUnit(Protocol):
    """What ``Write`` gives an endpoint: the ``Writer``, or a ``KeyedWrite`` around it."""

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A request with a key, as the transaction needs it."""

    key_hash: str
    """SHA-256 of the caller, the method, the route template and the key."""
    fingerprint: str
    """HMAC-SHA256 of the method, the path and query, the caller and the body."""
    status_code: int
    render: Callable[[Any], Answer | None]
    """The route's answer for the unit's result; None when the result is no answer (None,
    the endpoint's 404): then nothing is stored."""


class _Stored(NamedTuple):
    same_request: bool
    status_code: int
    body: bytes
    etag: str | None


class IdempotencyKeys:
    """Claims keys and stores answers, in the transaction of the unit of work; one per
    process (a singleton): every ``sweep_every``-th claim, starting with the first, also
    deletes up to ``sweep_limit`` expired keys, oldest first, skipping rows another
    transaction holds (PostgreSQL), so that the sweep never waits."""

    def __init__(
        self,
        *,
        ttl_hours: float,
        lock_wait: float,
        secret: SecretStr | None = None,
        sweep_every: int = 64,
        sweep_limit: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl_hours * 3600
        self.lock_wait_ms = max(1, round(lock_wait * 1000))
        self._secret = secret.get_secret_value().encode() if secret is not None else b""
        self.sweep_every = sweep_every
        self.sweep_limit = sweep_limit
        self._clock = clock
        self._claims = itertools.count()

    def keyed_request(
        self,
        *,
        key: str,
        caller: int | None,
        method: str,
        route: str,
        target: str,
        body: bytes,
        status_code: int,
        render: Callable[[Any], Answer | None],
    ) -> KeyedRequest:
        """``route`` is the template (``/users/{user_id}/items/``), ``target`` the path and
        query the client sent."""
        who = "-" if caller is None else str(caller)
        scope = "\0".join((who, method, route, key)).encode()
        request = "\0".join((method, target, who)).encode() + b"\0" + body
        return KeyedRequest(
            key_hash=hashlib.sha256(scope).hexdigest(),
            fingerprint=hmac.new(self._secret, request, hashlib.sha256).hexdigest(),
            status_code=status_code,
            render=render,
        )

    def run(
        self,
        session: Session,
        request: KeyedRequest,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """The unit of work for ``Writer``: ``fn``'s result, or the stored answer."""
        connection = session.connection()
        stored = self._claim(connection, request)
        if stored is not None:
            return stored
        result = fn(session, *args, **kwargs)
        answer = request.render(result)
        if answer is None:  # not an answer (the endpoint's 404): the key stays free
            connection.execute(_FORGET, {"this_key": request.key_hash})
            return result
        body, etag = answer
        values = {"this_key": request.key_hash, "status": request.status_code, "tag": etag}
        connection.execute(_STORE, {**values, "answer": body})
        return result

    def sweep(self, connection: Connection, now: float | None = None) -> int:
        """Delete up to ``sweep_limit`` expired keys, oldest first; how many."""
        sweep = _PG_SWEEP if connection.dialect.name == "postgresql" else _SWEEP
        when = self._clock() if now is None else now
        return connection.execute(sweep, {"now": when, "limit": self.sweep_limit}).rowcount

    def _claim(self, connection: Connection, request: KeyedRequest) -> _Stored | None:
        """None once this transaction holds the key; else what another one stored."""
        now = self._clock()
        if next(self._claims) % self.sweep_every == 0:
            self.sweep(connection, now)
        postgres = connection.dialect.name == "postgresql"
        values = {
            "key_hash": request.key_hash,
            "fingerprint": request.fingerprint,
            "expires_at": now + self.ttl,
        }
        try:
            for _ in range(_ATTEMPTS):
                if self._insert(connection, values, postgres):
                    return None
                row = connection.execute(_FIND, {"this_key": request.key_hash, "now": now}).first()
                if row is not None:
                    if row.status_code is None:  # not possible committed; defensive
                        raise IdempotencyKeyInProgressError
                    same = hmac.compare_digest(row.fingerprint, request.fingerprint)
                    return _Stored(same, row.status_code, row.body or b"", row.etag)
                if self._take_over(connection, values, now, postgres):
                    return None
                # Swept, or taken over, by another transaction meanwhile: try again.
        except DBAPIError as error:
            if sqlstate(error) == _LOCK_NOT_AVAILABLE:
                raise IdempotencyKeyInProgressError from None
            raise
        raise IdempotencyKeyInProgressError

    def _insert(self, connection: Connection, values: dict[str, Any], postgres: bool) -> bool:
        if postgres:
            wait = {"wait": f"{self.lock_wait_ms}ms", **values}
            return connection.execute(_PG_CLAIM, wait).first() is not None
        return connection.execute(_SQLITE_CLAIM, values).first() is not None

    def _take_over(
        self, connection: Connection, values: dict[str, Any], now: float, postgres: bool
    ) -> bool:
        """An expired key is a free key: take its row over (if nobody else just did)."""
        if postgres:
            connection.execute(_PG_BOUND_WAIT, {"wait": f"{self.lock_wait_ms}ms"})
            return connection.execute(_PG_TAKE_OVER, {**values, "now": now}).first() is not None
        taken = connection.execute(
            _SQLITE_TAKE_OVER,
            {
                "this_key": values["key_hash"],
                "now": now,
                "new_fingerprint": values["fingerprint"],
                "new_expires_at": values["expires_at"],
            },
        )
        return taken.rowcount == 1


class KeyedWrite:
    """``Write`` for a request with an ``Idempotency-Key``: its (one) unit of work runs with
    the key claimed and its answer stored in the same transaction; a repeat of an answered
    request raises ``IdempotentReplay`` (the stored answer), a reuse of the key for another
    request ``IdempotencyKeyReusedError`` (422)."""

    def __init__(
        self,
        writer: WriteUnit,
        keys: IdempotencyKeys,
        prepare: Callable[[], Awaitable[KeyedRequest]],
    ) -> None:
        self._writer = writer
        self._keys = keys
        self._prepare = prepare
        self._used = False

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._used:
            raise RuntimeError(
                "an endpoint that takes Idempotency-Key makes its change in one write(...): "
                "the key and the answer are stored in that unit's transaction"
            )
        self._used = True
        request = await self._prepare()
        outcome = await self._writer(self._keys.run, request, fn, args, kwargs)
        if isinstance(outcome, _Stored):
            if not outcome.same_request:
                raise IdempotencyKeyReusedError
            raise IdempotentReplay(outcome.status_code, outcome.body, outcome.etag)
        return cast(T, outcome)
