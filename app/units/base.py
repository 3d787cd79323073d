"""What a read and a write have in common: one worker thread, one session, one gate slot."""

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import anyio.to_thread
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import request_context
from app.observability import tracing
from app.units.gate import Gate

__all__ = ["P", "SessionFactory", "T", "Unit", "qualified_name", "sqlite_code", "sqlstate"]

P = ParamSpec("P")
T = TypeVar("T")
SessionFactory = Callable[[], Session]


class Unit(ABC):
    """Runs database work in one worker thread, in a transaction of its own, behind a gate.

    One thread hop per request, where a sync endpoint on a ``get_db`` dependency takes four
    (dependency setup, endpoint, response validation, dependency teardown). The work returns
    what the response needs (schemas, not ORM objects, which stay in the transaction).
    """

    kind: ClassVar[request_context.GateKind]

    def __init__(self, gate: Gate, sessions: SessionFactory) -> None:
        self.gate = gate
        self.sessions = sessions

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        hooks = tracing.hooks
        if hooks is None:
            return await self._serve(fn, args, kwargs)
        with hooks.unit(self.kind):  # a db.read / db.write span, current in its thread too
            return await self._serve(fn, args, kwargs)

    async def _serve(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        """The unit: its gate, then its thread (subclasses route, batch, run inline)."""
        await self._acquire()
        try:
            return await anyio.to_thread.run_sync(self._run, fn, args, kwargs)
        finally:
            self.gate.release()

    async def _acquire(self) -> None:
        arrived = time.perf_counter()
        try:
            await self.gate.acquire()
        finally:
            # Also when it gave up: the access log shows what a gate-timeout 503 waited.
            waited = time.perf_counter() - arrived
            request_context.add_gate_wait(self.kind, waited)
            hooks = tracing.hooks
            if hooks is not None:
                hooks.gate_wait(self.kind, waited)

    @abstractmethod
    def _run(self, fn: Callable[..., T], args: Any, kwargs: Any, budget: float = 0) -> T: ...


def sqlite_code(error: DBAPIError) -> int:
    """SQLite's primary result code (extended codes keep it in the low byte), else 0."""
    return getattr(error.orig, "sqlite_errorcode", 0) & 0xFF


def sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


def qualified_name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
