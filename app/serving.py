"""What the app does around its life in a serving process, besides the schema: readiness
that drains at SIGTERM, the metrics' bookkeeping, and the replicas' monitor."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
from fastapi import FastAPI

from app import draining, metrics
from app.config import Settings
from app.replicas import ReplicaSet
from containers import Container

__all__ = ["monitoring", "serving"]


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
        replicas: ReplicaSet | None = c.replicas()
        for replica in replicas.replicas if replicas is not None else ():
            metrics.instrument_engine(replica.engine, replica.name)
    try:
        with draining.on_signals(app.state):
            yield
    finally:
        if s.METRICS_ENABLED:
            metrics.mark_process_dead()


@asynccontextmanager
async def monitoring(replicas: ReplicaSet | None) -> AsyncIterator[None]:
    """With replicas: check each once before serving (so that the first reads already use
    them), then every DB_REPLICA_CHECK_SECONDS in the background until the block ends.
    Leave it before the engines are disposed."""
    if replicas is None:
        yield
        return
    await replicas.check()
    async with anyio.create_task_group() as group:
        group.start_soon(replicas.monitor)
        try:
            yield
        finally:
            group.cancel_scope.cancel()
