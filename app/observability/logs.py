"""Log records carry the request id; one text or JSON line each, uvicorn's own records included.

``app serve`` hands ``logging_config(...)`` to uvicorn, which applies it in every worker. Only
what the code passes to a logger is written: no request body or header is ever logged.
"""

import json
import logging
import time
from typing import Any, Literal

from app import request_context

__all__ = ["JsonFormatter", "LogFormat", "RequestIdFilter", "TextFormatter", "logging_config"]

LogFormat = Literal["text", "json"]
NO_REQUEST = "-"

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


def _utc(record: logging.LogRecord) -> str:
    global _last_second
    second = int(record.created)
    if second != _last_second[0]:  # formatted once a second, not once a record
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-25T10:00:00.123Z INFO app.access [<request id>] GET /users/{user_id} 200 ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc(record)} {record.levelname} {record.name} "
            f"[{getattr(record, 'request_id', NO_REQUEST)}] {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_JSON = json.JSONEncoder(default=str, ensure_ascii=False)
"""One encoder for every line: ``json.dumps`` with options builds a new one each call."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid (workers share the stream),
    message, request_id, and the record's ``extra`` fields (the access log's method, route,
    status, ...; ``trace_id`` and ``span_id`` with tracing on)."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", NO_REQUEST)
        line: dict[str, Any] = {
            "time": _utc(record),
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


def logging_config(*, level: str, log_format: LogFormat, access_log: bool) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the app and uvicorn: one stderr handler for every
    record, uvicorn's access log off (``app.access`` replaces it)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"line": {"()": JsonFormatter if log_format == "json" else TextFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "app.access": {"level": "NOTSET" if access_log else "WARNING"},
            # A handler of its own, so that ECHO_SQL adds no second one printing to stdout.
            "sqlalchemy.engine.Engine": {"handlers": ["stderr"], "propagate": False},
        },
    }
