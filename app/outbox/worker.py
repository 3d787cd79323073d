"""``app worker``'s loop: claim due events, run their handlers, record each outcome.

A batch of up to OUTBOX_BATCH_SIZE events is claimed under a lease (OUTBOX_LEASE_SECONDS) and
delivered concurrently; once every event of the batch is done, their outcomes are recorded in
one transaction (delivered, or retried after a backoff, or dead after OUTBOX_MAX_ATTEMPTS).
A worker that dies loses nothing: its events come due again when the lease ends. On SIGTERM
(or SIGINT) the worker claims nothing more, finishes the deliveries it started and returns.
"""

import logging
import signal
import time
from dataclasses import dataclass

import anyio
import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError

from app.observability import metrics, tracing
from app.outbox.handlers import Event, Handler, Registry
from app.outbox.store import Attempt, Claimed, Outbox, Outcome, backoff

__all__ = ["Worker", "WorkerOptions"]

log = logging.getLogger("app.outbox")

_STATS_EVERY = 5.0
_PRUNE_EVERY = 60.0


@dataclass(frozen=True)
class WorkerOptions:
    batch_size: int = 20
    lease: float = 60.0
    poll: float = 1.0
    max_attempts: int = 10
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    retention: float = 7 * 24 * 3600.0


class Worker:
    def __init__(self, outbox: Outbox, registry: Registry, options: WorkerOptions) -> None:
        self.outbox = outbox
        self.registry = registry
        self.options = options
        self.stopping = anyio.Event()
        self._next_stats = 0.0
        self._next_prune = 0.0

    async def run(self) -> None:
        """Deliver until ``stopping`` is set (by SIGTERM or SIGINT, or by the caller)."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._stop_on_signals)
            while not self.stopping.is_set():
                try:
                    await self._housekeeping()
                    claimed = await self.run_once()
                except SQLAlchemyError as error:  # an outage: try again, never exit
                    log.warning("outbox: database error: %s", str(error).splitlines()[0])
                    claimed = 0
                if not claimed:
                    with anyio.move_on_after(self.options.poll):
                        await self.stopping.wait()
            tasks.cancel_scope.cancel()

    async def run_once(self) -> int:
        """Claim one batch, deliver it, record the outcomes (in one transaction); how many
        events it held."""
        o = self.options
        token, events = await anyio.to_thread.run_sync(self.outbox.claim, o.batch_size, o.lease)
        if not events:
            return 0
        attempts: list[Attempt] = []
        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for event in events:
                tasks.start_soon(self._attempt, event, attempts)
        outcomes = await anyio.to_thread.run_sync(
            lambda: self.outbox.finish(token, attempts, max_attempts=o.max_attempts)
        )
        took = round((time.perf_counter() - started) * 1000, 1)
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            if outcome != "lost":
                metrics.count_outbox(outcome)
            _log(attempt, outcome, took)
        return len(events)

    async def _attempt(self, claimed: Claimed, attempts: list[Attempt]) -> None:
        event = Event(
            claimed.id, claimed.type, claimed.payload, claimed.attempts, claimed.created_at
        )
        done = set(claimed.done)
        errors: list[str] = []

        async def run(name: str, handler: Handler) -> None:
            try:
                await handler(event)
            except Exception as failure:  # a handler's failure is the event's retry
                errors.append(f"{name}: {failure}" if str(failure) else f"{name}: {failure!r}")
            else:
                done.add(name)

        # Traced: a span of its own, linked to the one that wrote the event.
        with tracing.linked_span(f"outbox.deliver {event.type}", claimed.traceparent):
            async with anyio.create_task_group() as tasks:  # a slow destination delays no other
                for name, handler in self.registry.for_type(event.type):
                    if name not in done:
                        tasks.start_soon(run, name, handler)
        o = self.options
        delay = backoff(claimed.attempts, o.backoff_base, o.backoff_max)
        attempts.append(Attempt(claimed, done, "; ".join(errors) or None, delay))

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + _STATS_EVERY
            stats = await anyio.to_thread.run_sync(self.outbox.stats)
            oldest = stats.oldest_created_at
            age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
            metrics.observe_outbox(pending=stats.pending, oldest_age=age, dead=stats.dead)
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY
            pruned = await anyio.to_thread.run_sync(self.outbox.prune, self.options.retention)
            if pruned:
                log.info("outbox: pruned %d delivered events", pruned)

    async def _stop_on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info(
                    "outbox worker: %s, finishing the deliveries in flight",
                    signal.Signals(signum).name,
                )
                self.stopping.set()
                return


def _log(attempt: Attempt, outcome: Outcome, batch_ms: float) -> None:
    event = attempt.event
    log.log(
        logging.WARNING if attempt.error else logging.INFO,
        "outbox event %s %s attempt %d: %s",
        event.id,
        event.type,
        event.attempts,
        outcome,
        extra={
            "event_id": event.id,
            "event_type": event.type,
            "attempt": event.attempts,
            "outcome": outcome,
            "error": attempt.error,
            "retry_in": round(attempt.delay, 3) if outcome == "retried" else None,
            "batch_ms": batch_ms,
        },
    )
