"""What the code serving one request knows about it: its id, the time it waited at the gates,
the WAL position its reads must see (read-your-writes with replicas), and with tracing on
its trace and span ids.

The request middleware (``app.middleware.telemetry``) starts a ``RequestContext`` for every request;
anything below it reads it through ``current()``, on the event loop and in the worker threads
that run units of work (anyio's ``to_thread.run_sync`` copies the context into them).
"""

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "GateKind",
    "RequestContext",
    "add_gate_wait",
    "advance_wal_position",
    "current",
    "request_id",
    "start",
    "wal_position",
]

GateKind = Literal["read", "write"]


@dataclass(slots=True)
class RequestContext:
    request_id: str
    gate_wait: dict[GateKind, float] = field(default_factory=dict)
    """Seconds spent waiting for a gate slot, by kind of unit of work."""
    wal_position: int | None = None
    """The primary's WAL position (an LSN) that this request's reads must see: the one the
    client brought, advanced by the writes it made (``app.middleware.read_your_writes``)."""
    traceparent: str | None = None
    """The W3C ``traceparent`` header the request came with, if valid: stored with the
    outbox events the request writes (``app.outbox.events``)."""
    trace_id: str | None = None
    """With tracing on: the request's trace (32 hex digits) and its server span (16), for
    the log lines made while serving it (``app.observability.tracing``)."""
    span_id: str | None = None

    @property
    def total_gate_wait(self) -> float:
        return sum(self.gate_wait.values(), 0.0)


_current: ContextVar[RequestContext | None] = ContextVar("app_request", default=None)


def start(request_id: str, traceparent: str | None = None) -> RequestContext:
    """A new context for the request being served in this task.

    It is never reset: uvicorn serves each request in a task of its own, and the handlers
    outside the middleware (the 500 handler, uvicorn's error log) still see it.
    """
    context = RequestContext(request_id, traceparent=traceparent)
    _current.set(context)
    return context


def current() -> RequestContext | None:
    return _current.get()


def request_id() -> str | None:
    """The id of the request being served, or None outside a request."""
    context = _current.get()
    return None if context is None else context.request_id


def add_gate_wait(kind: GateKind, seconds: float) -> None:
    context = _current.get()
    if context is not None:
        context.gate_wait[kind] = context.gate_wait.get(kind, 0.0) + seconds


def wal_position() -> int | None:
    """The WAL position the current request's reads must see, or None."""
    context = _current.get()
    return None if context is None else context.wal_position


def advance_wal_position(position: int) -> None:
    """A write of the current request committed before ``position``: its later reads, and
    the client's next requests, must see it. ``Writer`` calls it on the event loop once the
    unit has returned from its thread."""
    context = _current.get()
    if context is not None and (context.wal_position or 0) < position:
        context.wal_position = position
