"""Log records carry the request id; one text or JSON line each, uvicorn's own records included.

``app serve`` hands ``logging_config(...)`` to uvicorn, which applies it in every worker. Only
what the code passes to a logger is written: no request body or header is ever logged.

Access lines, one per request, are the bulk of the output: they are written in batches
(``LineWriter``), at the latest ``FLUSH_SECONDS`` after they were made, before any other
record, and at exit; every other record is written at once. The telemetry middleware formats
its access line itself when ``app.access`` writes to an ``AccessHandler`` alone
(``access_handler``), the same line ``logging`` would make, without a ``LogRecord``.
"""

import json
import logging
import os
import sys
import threading
import time
import weakref
from typing import IO, Any, ClassVar, Literal

from app import request_context

__all__ = [
    "FLUSH_SECONDS",
    "AccessHandler",
    "JsonFormatter",
    "LineHandler",
    "LineWriter",
    "LogFormat",
    "RequestIdFilter",
    "TextFormatter",
    "access_handler",
    "logging_config",
]

LogFormat = Literal["text", "json"]
NO_REQUEST = "-"
ACCESS_LOGGER = "app.access"
FLUSH_SECONDS = 0.5
"""Longest time a batched (access) line waits before it is written."""
BATCH_CHARS = 64 * 1024
"""A batch this large is written at once."""

_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the id of the request being served in the emitting thread
    or task, ``-`` outside any request; with tracing on, also ``trace_id`` and ``span_id``
    (the request's server span), which JSON lines carry. On a handler, it sees every record
    the handler gets."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request = request_context.current()
            if request is None:
                record.request_id = NO_REQUEST
            else:
                record.request_id = request.request_id
                if request.trace_id is not None:
                    record.trace_id = request.trace_id
                    record.span_id = request.span_id
        return True


_last_second: tuple[int, str] = (-1, "")


def _utc(created: float) -> str:
    global _last_second
    second = int(created)
    if second != _last_second[0]:  # formatted once a second, not once a record
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-25T10:00:00.123Z INFO app.access [<request id>] GET /users/{user_id} 200 ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc(record.created)} {record.levelname} {record.name} "
            f"[{getattr(record, 'request_id', NO_REQUEST)}] {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_JSON = json.JSONEncoder(default=str, ensure_ascii=False)
"""One encoder for every line: ``json.dumps`` with options builds a new one each call."""
_quoted = json.encoder.encode_basestring
"""A JSON string literal, as ``_JSON`` writes one (ensure_ascii off)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid (workers share the stream),
    message, request_id, and the record's ``extra`` fields (the access log's method, route,
    status, ...; ``trace_id`` and ``span_id`` with tracing on)."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", NO_REQUEST)
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            "request_id": None if request_id == NO_REQUEST else request_id,
        }
        line.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(line)


class LineWriter:
    """Lines to a text stream: ``write_now`` at once, ``write`` in batches of up to
    ``BATCH_CHARS``, written by a background thread at most ``FLUSH_SECONDS`` after their
    first line, or by the next ``write_now`` or ``flush`` (so lines keep their order). One
    per stream (``for_stream``), shared by the handlers that write to it."""

    _by_stream: ClassVar["weakref.WeakValueDictionary[int, LineWriter]"] = (
        weakref.WeakValueDictionary()
    )

    def __init__(
        self, stream: IO[str], *, seconds: float = FLUSH_SECONDS, chars: int = BATCH_CHARS
    ) -> None:
        self.stream = stream
        self.seconds = seconds
        self.chars = chars
        self._batch: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._flusher: threading.Thread | None = None

    @classmethod
    def for_stream(cls, stream: IO[str]) -> "LineWriter":
        writer = cls._by_stream.get(id(stream))
        if writer is None or writer.stream is not stream:
            writer = cls._by_stream[id(stream)] = cls(stream)
        return writer

    def write(self, line: str) -> None:
        """Batch ``line`` (with its newline)."""
        with self._lock:
            self._batch.append(line)
            self._size += len(line)
            if self._size >= self.chars:
                self._write_batch()
            elif len(self._batch) == 1:
                self._wake_flusher()

    def write_now(self, line: str) -> None:
        """Write what is batched, then ``line`` (with its newline)."""
        with self._lock:
            if self._batch:
                self._batch.append(line)
                self._write_batch()
            else:
                self._write(line)

    def flush(self) -> None:
        with self._lock:
            self._write_batch()

    def _write_batch(self) -> None:
        if self._batch:
            text = "".join(self._batch)
            self._batch.clear()
            self._size = 0
            self._write(text)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._flusher = None
        self._batch.clear()
        self._size = 0

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_in_time, name="app-log-flusher", daemon=True
            )
            self._flusher.start()
        self._due.set()

    def _flush_in_time(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.seconds)
            with self._lock:
                self._due.clear()
                try:
                    self._write_batch()
                except Exception:  # a closed or broken stream: lose the batch, not the thread
                    self._batch.clear()
                    self._size = 0


class LineHandler(logging.Handler):
    """Each record as one line (its formatter's) to ``stream``, at once (stderr by default)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.writer = LineWriter.for_stream(stream if stream is not None else sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write_now(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        super().close()


class AccessHandler(LineHandler):
    """``app.access``'s handler: lines in batches (``LineWriter.write``), and ``access``, the
    telemetry middleware's direct way to write one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def access(
        self,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        gate_wait_ms: float,
        client: str,
        request: request_context.RequestContext,
    ) -> bool:
        """Write the access line ``TelemetryMiddleware`` would log, as ``JsonFormatter`` or
        ``TextFormatter`` would format it; False (nothing written) with another formatter."""
        now = time.time()
        message = (
            f"{method} {route} {status} {duration_ms:.1f} ms (gates {gate_wait_ms:.1f} ms) "
            f"from {client}"
        )
        formatter = type(self.formatter)
        if formatter is JsonFormatter:
            traced = (
                ""
                if request.trace_id is None
                else f', "trace_id": "{request.trace_id}", "span_id": "{request.span_id}"'
            )
            # request_id is 1-128 of [A-Za-z0-9._-], trace and span ids hex: nothing to escape
            line = (
                f'{{"time": "{_utc(now)}", "level": "info", "logger": "{ACCESS_LOGGER}", '
                f'"pid": {_pid}, "message": {_quoted(message)}, '
                f'"request_id": "{request.request_id}", "method": {_quoted(method)}, '
                f'"route": {_quoted(route)}, "status": {status}, '
                f'"duration_ms": {duration_ms!r}, "gate_wait_ms": {gate_wait_ms!r}, '
                f'"client": {_quoted(client)}{traced}}}\n'
            )
        elif formatter is TextFormatter:
            line = f"{_utc(now)} INFO {ACCESS_LOGGER} [{request.request_id}] {message}\n"
        else:
            return False
        self.writer.write(line)
        return True


def access_handler(logger: logging.Logger) -> AccessHandler | None:
    """The ``AccessHandler`` that ``logger`` writes to alone, if so: nothing else (a test's
    capture, another handler, a filter) would see what it writes directly."""
    handlers = logger.handlers
    if len(handlers) == 1 and not logger.propagate and not logger.filters:
        handler = handlers[0]
        if type(handler) is AccessHandler and handler.level <= logging.INFO:
            return handler
    return None


_pid = os.getpid()


def _forked() -> None:
    """In a forked child: its own pid, and writers with fresh locks, no flusher and nothing
    batched (the parent writes its batch)."""
    global _pid
    _pid = os.getpid()
    for writer in list(LineWriter._by_stream.values()):
        writer._forked()


os.register_at_fork(after_in_child=_forked)


def logging_config(*, level: str, log_format: LogFormat, access_log: bool) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the app and uvicorn: one stderr stream for every
    record, uvicorn's access log off (``app.access`` replaces it, in batches)."""
    stderr = {"stream": "ext://sys.stderr", "formatter": "line", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"line": {"()": JsonFormatter if log_format == "json" else TextFormatter}},
        "handlers": {
            "stderr": {"()": LineHandler, **stderr},
            "access": {"()": AccessHandler, **stderr},
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
            ACCESS_LOGGER: {
                "level": "NOTSET" if access_log else "WARNING",
                "handlers": ["access"],
                "propagate": False,
            },
            # A handler of its own, so that ECHO_SQL adds no second one printing to stdout.
            "sqlalchemy.engine.Engine": {"handlers": ["stderr"], "propagate": False},
        },
    }
