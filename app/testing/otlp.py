"""An OTLP/HTTP trace receiver on 127.0.0.1, for tests: no collector needed.

    with OtlpReceiver() as receiver:
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        ...  # a LiveServer with env exports its spans here
        spans = receiver.wait_for(lambda spans: len(spans) >= 3, timeout=10)

A threaded HTTP server that accepts ``POST /v1/traces`` with ``application/x-protobuf``
(gzip or not), parses each ``ExportTraceServiceRequest`` with opentelemetry-proto (the
``otel`` extra) and keeps its spans as ``ReceivedSpan``.
"""

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from app.testing.processes import HOST

__all__ = ["OtlpReceiver", "ReceivedSpan"]

PATH = "/v1/traces"
CONTENT_TYPE = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived; ids as lowercase hex (the parent's is "" for a root span)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    """``opentelemetry.proto.trace.v1.trace_pb2.Span.SpanKind``: 2 server, 3 client."""
    attributes: dict[str, Any]
    status_code: int
    """0 unset, 1 ok, 2 error."""
    scope: str
    resource: dict[str, Any] = field(repr=False)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)
    links: list[tuple[str, str]] = field(default_factory=list, repr=False)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = _value(pair.value)
    return found


def parse(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        status_code=span.status.code,
                        scope=scope_spans.scope.name,
                        resource=resource,
                        events=[(e.name, _attributes(e.attributes)) for e in span.events],
                        links=[(k.trace_id.hex(), k.span_id.hex()) for k in span.links],
                    )
                )
    return spans


class OtlpReceiver:
    """Receives OTLP/HTTP trace exports on ``url`` until ``stop()`` (or the ``with`` block's
    end); ``spans()`` is what arrived so far, ``requests`` how many exports."""

    def __init__(self, host: str = HOST) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Condition()
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != PATH or self.headers.get("Content-Type") != CONTENT_TYPE:
                    self.send_error(404 if self.path != PATH else 415)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._receive(parse(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows failures, not every export

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter appends /v1/traces)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _receive(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1
            self._lock.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout: float
    ) -> list[ReceivedSpan]:
        """The spans once ``done(spans)`` holds; TimeoutError (with a count) after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(self._spans)} spans in {self.requests} exports after {timeout:g}s"
                    )
                self._lock.wait(left)
            return list(self._spans)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> "OtlpReceiver":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
