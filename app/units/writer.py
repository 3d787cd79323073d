"""``Writer``: a unit of work in a write transaction, committed before the response; on SQLite,
writes that queue together share one transaction (group commit)."""

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from app import request_context
from app.exceptions import DatabaseBusyError
from app.observability import tracing
from app.replicas.routing import committed_position, track_commit_position
from app.units.base import SessionFactory, T, Unit
from app.units.gate import Gate

__all__ = ["Writer"]


@dataclass(eq=False)
class _Job:
    """One ``write(fn, ...)`` waiting for, or done in, a batch."""

    fn: Callable[..., Any]
    args: Any
    kwargs: Any
    queued_at: float
    started_at: float | None = None
    batch_size: int = 0
    outcome: tuple[bool, Any] | None = None  # (succeeded, value or exception)


class Writer(Unit):
    """``await write(fn, *args)``: ``fn(session, *args)`` in a transaction, committed when
    ``fn`` returns and rolled back if it raises.

    With ``batch_size`` > 1 (SQLite: one writer at a time anyway), writes that queue while a
    transaction runs go together into the next one, in order: one thread hop, one BEGIN
    IMMEDIATE and one COMMIT for them all (group commit). Each still answers only once its
    changes are committed. If any of them raises, the batch is rolled back and each runs
    again in a transaction of its own, so a failing write takes nobody else down and no
    write half-commits; so a unit of work may run twice, and must keep its side effects in
    the database.

    With ``wal_positions`` (PostgreSQL with replicas), each write then reads the primary's
    WAL position on the connection it committed on (one more round trip) and advances the
    request's (``app.request_context.advance_wal_position``): the request's later reads, and the
    client's, must see it.
    """

    kind = "write"

    def __init__(
        self,
        gate: Gate,
        sessions: SessionFactory,
        *,
        batch_size: int = 1,
        wal_positions: bool = False,
    ) -> None:
        super().__init__(gate, sessions)
        if wal_positions and batch_size > 1:
            raise ValueError("WAL positions are for PostgreSQL: its writes come one at a time")
        self.batch_size = batch_size
        self.wal_positions = wal_positions
        self._queue: deque[_Job] = deque()
        self._leading = False
        self._batch_done: anyio.Event | None = None

    async def _serve(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if self.wal_positions:
            await self._acquire()
            try:
                written, position = await anyio.to_thread.run_sync(
                    self._run_tracked, fn, args, kwargs
                )
            finally:
                self.gate.release()
            request_context.advance_wal_position(position)
            return written
        if self.batch_size == 1:
            return await super()._serve(fn, args, kwargs)
        job = _Job(fn, args, kwargs, queued_at=time.perf_counter())
        self._queue.append(job)
        deadline = time.monotonic() + self.gate.timeout
        try:
            while job.outcome is None:
                if not self._leading:
                    await self._lead()  # this request runs the next batch, for everyone
                    continue
                left = deadline - time.monotonic()
                if left <= 0 and job.started_at is None:
                    raise DatabaseBusyError(
                        f"no database connection free within {self.gate.timeout:g}s"
                    )
                assert self._batch_done is not None  # made by the leader
                with anyio.move_on_after(left if job.started_at is None else math.inf):
                    await self._batch_done.wait()
        finally:
            if job.started_at is None:
                self._queue.remove(job)
            waited = (job.started_at or time.perf_counter()) - job.queued_at
            request_context.add_gate_wait(self.kind, waited)  # in this request's own context
            hooks = tracing.hooks
            if hooks is not None:
                hooks.gate_wait(self.kind, waited)
                if job.batch_size:
                    hooks.batch(job.batch_size)  # the SQL spans are under the leader's unit
        succeeded, value = job.outcome
        if not succeeded:
            raise value
        result: T = value
        return result

    async def _lead(self) -> None:
        self._leading = True
        done = self._batch_done = anyio.Event()  # what the others wait for
        try:
            await self.gate.acquire()
            try:
                size = min(self.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(size)]
                started = time.perf_counter()
                for job in batch:
                    job.started_at = started
                    job.batch_size = size
                outcomes = await anyio.to_thread.run_sync(self._run_batch, batch)
                for job, outcome in zip(batch, outcomes, strict=True):
                    job.outcome = outcome
            finally:
                self.gate.release()
        finally:
            self._leading = False
            done.set()

    def _run_batch(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        if len(batch) > 1:
            try:
                with self.sessions() as session, session.begin():
                    return [(True, job.fn(session, *job.args, **job.kwargs)) for job in batch]
            except Exception:
                pass
        return [self._attempt(job) for job in batch]

    def _attempt(self, job: _Job) -> tuple[bool, Any]:
        try:
            return True, self._run(job.fn, job.args, job.kwargs)
        except Exception as error:
            return False, error

    def _run(self, fn: Callable[..., T], args: Any, kwargs: Any, budget: float = 0) -> T:
        # BEGIN IMMEDIATE on SQLite: the write lock is taken up front, never upgraded later.
        with self.sessions() as session, session.begin():
            return fn(session, *args, **kwargs)

    def _run_tracked(self, fn: Callable[..., T], args: Any, kwargs: Any) -> tuple[T, int]:
        with self.sessions() as session:
            with session.begin():
                result = fn(session, *args, **kwargs)
                track_commit_position(session)
            return result, committed_position(session)
