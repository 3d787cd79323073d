"""Traces (OpenTelemetry): off unless the standard ``OTEL_*`` variables ask for them.

This module imports no OpenTelemetry. It decides whether tracing is on, as the SDK does
(``OTEL_TRACES_EXPORTER`` names an exporter other than ``none``, and ``OTEL_SDK_DISABLED``
is not ``true``), and holds ``hooks``: what the request path calls while tracing is on, None
while it is off, so that a request pays one attribute check per place it could be traced.
``start()`` (the lifespan's startup, in each worker of ``app serve --workers N``) imports the
SDK from ``app.observability.otel`` and sets ``hooks``; ``shutdown()`` flushes and clears it.

For code that must carry a trace further (an outbox worker delivering what a request wrote):
``current_traceparent()`` is the W3C ``traceparent`` of the current span, to store beside
the work, and ``linked_span(name, traceparent)`` starts a span linked to it later.
"""

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from starlette.types import Scope

    from app.request_context import GateKind, RequestContext

__all__ = [
    "EXTRA",
    "Hooks",
    "RequestSpan",
    "TracingUnavailableError",
    "current_traceparent",
    "hooks",
    "linked_span",
    "problem",
    "requested",
    "shutdown",
    "start",
    "use_provider",
    "wanted",
]

EXTRA = "otel"
_EXTRA_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.instrumentation.sqlalchemy.engine",
)
EXPORTERS = ("otlp", "console")
"""The values of ``OTEL_TRACES_EXPORTER`` served (comma-separated), besides ``none``."""
PROTOCOL = "http/protobuf"
"""The one OTLP protocol of the extra (``OTEL_EXPORTER_OTLP_PROTOCOL``)."""


class TracingUnavailableError(RuntimeError):
    """The variables ask for traces that this installation cannot produce (one line)."""


class RequestSpan(Protocol):
    """The server span of one request, current while the request is served."""

    def failed(self, error: BaseException) -> None: ...

    def end(self, route: str | None, status: int) -> None: ...


class Hooks(Protocol):
    """What the request path calls while tracing is on (``app.observability.otel.Tracing``)."""

    def request(self, scope: "Scope", context: "RequestContext") -> RequestSpan: ...

    def unit(self, kind: "GateKind") -> AbstractContextManager[None]: ...

    def gate_wait(self, kind: "GateKind", seconds: float) -> None: ...

    def batch(self, size: int) -> None: ...

    def routed(self, engine: str, reason: str) -> None: ...

    def replica_failed(self, engine: str, error: BaseException) -> None: ...

    def brought_position(self, position: str | None) -> None: ...

    def traceparent(self) -> str | None: ...

    def linked_span(self, name: str, traceparent: str | None) -> AbstractContextManager[None]: ...

    def shutdown(self) -> None: ...


hooks: Hooks | None = None
"""Set by ``start()`` while tracing is on; None while it is off."""
_provider: Any = None
"""A TracerProvider to use instead of one built from the environment (``use_provider``)."""


def _exporters(environ: Mapping[str, str]) -> list[str]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    return [] if "none" in names else names


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces, as the SDK reads it: ``OTEL_TRACES_EXPORTER``
    set to something other than ``none``, and ``OTEL_SDK_DISABLED`` not ``true``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(_exporters(environ))


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the next startup turns tracing on: requested, or a provider was handed over."""
    return _provider is not None or requested(environ)


def problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the traces the environment asks for cannot be produced, in one line; None when
    they can (or none are asked for)."""
    if not requested(environ):
        return None
    asked = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    for name in _EXTRA_MODULES:
        try:
            found = find_spec(name) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            return (
                f"OTEL_TRACES_EXPORTER={asked} asks for traces, but the '{EXTRA}' extra is not "
                f"installed ({name.rsplit('.', 1)[0]} is missing): pip install "
                f"'fastapi-di-sqlalchemy[{EXTRA}]', or unset OTEL_TRACES_EXPORTER"
            )
    unknown = [n for n in _exporters(environ) if n not in EXPORTERS]
    if unknown:
        return (
            f"OTEL_TRACES_EXPORTER={asked}: unknown exporter {unknown[0]!r} "
            f"(this service has {', '.join(EXPORTERS)} and none)"
        )
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOL
    )
    if "otlp" in _exporters(environ) and protocol.strip() != PROTOCOL:
        return f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this service exports OTLP as {PROTOCOL}"
    return None


def use_provider(provider: Any) -> None:
    """Trace to ``provider`` (an SDK ``TracerProvider``: a test's, with an in-memory exporter)
    from the next startup on, whatever the environment says; None: back to the environment.
    Whoever hands it over shuts it down."""
    global _provider
    _provider = provider


def start(engines: Sequence[tuple[str, "Engine"]]) -> None:
    """Start tracing in this process (after the fork: each worker has its own SDK and export
    thread) and trace the SQL of ``engines`` (name, engine). TracingUnavailableError (one
    line) when the environment asks for what cannot be done."""
    global hooks
    if _provider is None:
        reason = problem()
        if reason is not None:
            raise TracingUnavailableError(reason)
    from app.observability import otel

    hooks = otel.Tracing.start(engines, provider=_provider)


def shutdown() -> None:
    """Stop tracing: engines untraced, spans flushed (blocking: call it in a thread)."""
    global hooks
    stopping, hooks = hooks, None
    if stopping is not None:
        stopping.shutdown()


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (``00-<trace id>-<span id>-<flags>``);
    None while tracing is off or outside any span. Store it beside work done later (an
    outbox row) and hand it to ``linked_span`` then."""
    current = hooks
    return None if current is None else current.traceparent()


def linked_span(name: str, traceparent: str | None) -> AbstractContextManager[None]:
    """A span (current inside the block) in a trace of its own, linked to the span that
    ``traceparent`` names (``current_traceparent()`` then); nothing while tracing is off."""
    current = hooks
    return nullcontext() if current is None else current.linked_span(name, traceparent)
