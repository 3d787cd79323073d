"""The OpenTelemetry SDK behind ``app.observability.tracing``: imported only when tracing is on.

Spans, by the instrumentation scope ``app``:

- ``GET /users/{user_id}`` (server): one per request, continuing the caller's W3C
  ``traceparent``; named by the route template once routing is done (the method alone when
  no route matched), with ``http.request.method``, ``http.route``,
  ``http.response.status_code``, ``url.scheme``, ``network.protocol.version``, and
  ``error.type`` and an error status for a 5xx. Never the raw path, query or a header.
- ``db.read`` / ``db.write``: one per unit of work, with ``app.db.engine`` (``primary`` or
  ``replica-N``), ``app.db.route_reason`` for reads routed among replicas, and
  ``app.db.batch_size`` for a SQLite group commit; a ``db.gate`` child span for the time it
  waited for a slot at its gate. The SQL spans of the unit nest under it.
- SQL spans from opentelemetry-instrumentation-sqlalchemy on the app's engines: the
  statement's text, never its parameters; SQL commenting off.
"""

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import Engine
from starlette.exceptions import HTTPException
from starlette.types import Scope

from app.exceptions import REFUSALS
from app.request_context import GateKind, RequestContext

__all__ = ["SERVICE_NAME", "Tracing", "build_provider"]

SERVICE_NAME = "fastapi-di-sqlalchemy"
"""``service.name`` unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names one."""
_SCOPE = "app"
_PROPAGATOR = TraceContextTextMapPropagator()
_CARRIED = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_PRIMARY = "primary"
_ENGINE = "app.db.engine"


def build_provider() -> TracerProvider:
    """A TracerProvider as the OTEL_* variables describe it: the sampler
    (OTEL_TRACES_SAMPLER), the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, plus
    ``process.pid``: workers differ by it), and a BatchSpanProcessor (OTEL_BSP_*) per
    exporter of OTEL_TRACES_EXPORTER (``otlp``: OTEL_EXPORTER_OTLP_*, ``console``)."""
    resource = Resource.create({"process.pid": os.getpid()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    for name in dict.fromkeys(n for n in names if n):
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _answered_4xx(error: Exception) -> bool:
    if isinstance(error, HTTPException):
        return error.status_code < 500
    return isinstance(error, REFUSALS)


def _error_type(error: BaseException) -> str:
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


class _ServerSpan:
    __slots__ = ("error", "method", "span", "token")

    def __init__(self, span: Span, token: object, method: str) -> None:
        self.span = span
        self.token = token
        self.method = method
        self.error: BaseException | None = None

    def failed(self, error: BaseException) -> None:
        self.error = error

    def end(self, route: str | None, status: int) -> None:
        span = self.span
        try:
            if route is not None:
                span.update_name(f"{self.method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                error_type = str(status) if self.error is None else _error_type(self.error)
                span.set_attribute("error.type", error_type)
                span.set_status(StatusCode.ERROR)
            span.end()
        finally:
            otel_context.detach(self.token)  # type: ignore[arg-type]


class Tracing:
    """The hooks of ``app.observability.tracing`` on an SDK TracerProvider."""

    def __init__(self, provider: trace.TracerProvider, *, owned: bool) -> None:
        self.provider = provider
        self.owned = owned
        self.tracer = provider.get_tracer(_SCOPE)

    @classmethod
    def start(
        cls, engines: Sequence[tuple[str, Engine]], *, provider: TracerProvider | None = None
    ) -> "Tracing":
        """Tracing on ``provider`` (else one built from the environment, made the global
        one); the SQL of ``engines`` traced."""
        owned = provider is None
        if provider is None:
            provider = build_provider()
            trace.set_tracer_provider(provider)
        tracing = cls(provider, owned=owned)
        sql_tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
        unused = NoOpMeter("app").create_up_down_counter("db.client.connections.usage")
        traced: set[int] = set()
        for _, engine in engines:
            if id(engine) not in traced:  # the async engine may share the sync one's
                traced.add(id(engine))
                EngineTracer(sql_tracer, engine, unused, enable_commenter=False)  # type: ignore[no-untyped-call]
        return tracing

    def shutdown(self) -> None:
        EngineTracer.remove_all_event_listeners()  # type: ignore[no-untyped-call]
        if self.owned and isinstance(self.provider, TracerProvider):
            self.provider.shutdown()  # flushes what is queued

    def request(self, scope: Scope, context: RequestContext) -> _ServerSpan:
        carrier = {}
        for name, value in scope["headers"]:
            key = _CARRIED.get(name)
            if key is not None:
                carrier[key] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        method = scope["method"]
        known = method in _METHODS
        span = self.tracer.start_span(
            method if known else "HTTP",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method if known else "_OTHER",
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
        )
        ids = span.get_span_context()
        context.trace_id = format(ids.trace_id, "032x")
        context.span_id = format(ids.span_id, "016x")
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return _ServerSpan(span, token, method if known else "HTTP")

    @contextmanager
    def unit(self, kind: GateKind) -> Iterator[None]:
        with self.tracer.start_as_current_span(
            f"db.{kind}",
            attributes={"app.unit.kind": kind, _ENGINE: _PRIMARY},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except Exception as error:
                span.set_attribute("error.type", _error_type(error))
                if not _answered_4xx(error):  # a refusal is the client's, not a failure
                    span.set_status(StatusCode.ERROR)
                raise

    def gate_wait(self, kind: GateKind, seconds: float) -> None:
        ended = time.time_ns()
        span = self.tracer.start_span(
            "db.gate",
            start_time=ended - int(seconds * 1e9),
            attributes={"app.gate.kind": kind},
        )
        span.end(end_time=ended)

    def batch(self, size: int) -> None:
        trace.get_current_span().set_attribute("app.db.batch_size", size)

    def routed(self, engine: str, reason: str) -> None:
        span = trace.get_current_span()
        name = _PRIMARY if engine == "engine" else engine
        span.set_attribute(_ENGINE, name)
        span.set_attribute("app.db.route_reason", reason)
        span.add_event("db.routed", {_ENGINE: name, "app.db.route_reason": reason})

    def replica_failed(self, engine: str, error: BaseException) -> None:
        trace.get_current_span().add_event(
            "db.replica_failed", {_ENGINE: engine, "error.type": _error_type(error)}
        )

    def brought_position(self, position: str | None) -> None:
        if position is not None:
            trace.get_current_span().set_attribute("app.wal_position.brought", position)

    def traceparent(self) -> str | None:
        ids = trace.get_current_span().get_span_context()
        if not ids.is_valid:
            return None
        return f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"

    @contextmanager
    def linked_span(self, name: str, traceparent: str | None) -> Iterator[None]:
        links: list[Link] = []
        if traceparent:
            ids = trace.get_current_span(
                _PROPAGATOR.extract({"traceparent": traceparent})
            ).get_span_context()
            if ids.is_valid:
                links.append(Link(ids))
        root = otel_context.Context()  # a trace of its own: the link says where it came from
        with self.tracer.start_as_current_span(name, context=root, links=links):
            yield
