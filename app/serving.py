"""What the app does around its life in a serving process, besides the database: readiness
that drains at SIGTERM, and the metrics' bookkeeping."""

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from app import draining, metrics
from app.config import Settings
from containers import Container

__all__ = ["serving"]


@contextmanager
def serving(app: FastAPI, s: Settings, c: Container) -> Iterator[None]:
    """From startup to shutdown: ``app.state.draining`` and ``app.state.metrics_enabled``;
    with metrics on, the container's engines feed ``db_connections_in_use``. Leave it after
    the engines are disposed: this process's live gauges are then dropped."""
    app.state.metrics_enabled = s.METRICS_ENABLED
    if s.METRICS_ENABLED:
        metrics.forget_dead_processes()
        metrics.instrument_engine(c.engine(), "engine")
        metrics.instrument_engine(c.async_engine().sync_engine, "async_engine")
    try:
        with draining.on_signals(app.state):
            yield
    finally:
        if s.METRICS_ENABLED:
            metrics.mark_process_dead()
