"""An app's life in a serving process: wiring and sizing the request path from the container
at startup, the schema, readiness that drains at SIGTERM, the metrics' bookkeeping, the
replicas' monitor, traces (when the OTEL_* variables ask for them), and the engines'
disposal at shutdown.

uvicorn already stops accepting connections on SIGTERM (or SIGINT), closes the idle
keep-alive ones, waits up to ``--timeout-graceful-shutdown`` for the requests in flight and
only then runs the lifespan shutdown. What it does not do is tell the app; so, while the app
serves, its handler for those signals is wrapped: the wrapper sets ``Runtime.draining`` and
calls it. This works in every worker of ``--workers N`` (uvicorn's supervisor sends each one
SIGTERM) and with any server that handles the signals in Python.
"""

import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType, ModuleType
from typing import Any, cast

import anyio
import anyio.to_thread
from fastapi import FastAPI

from app import migrations, routers
from app.config import Settings
from app.database import ensure_database_schema
from app.observability import metrics, tracing
from app.replicas.replica_set import ReplicaSet
from app.runtime import Runtime, runtime_of
from containers import Container, container

__all__ = [
    "SIGNALS",
    "dispose_engines",
    "lifespan",
    "on_signals",
    "replicas_configured",
    "reset_request_path",
]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Wire the routers and size the request path from the container's current state,
    prepare the schema, serve, and dispose of the engines at shutdown."""
    # At every startup, not once at import: a test that unwired the container, or changed
    # its settings or engine, gets an app that serves with what the container holds now.
    if routers not in cast(list[ModuleType], container.wired_to_packages):
        container.wire(packages=[routers], warn_unresolved=True)
    reset_request_path(container)
    s: Settings = container.settings()
    runtime = runtime_of(app)
    if runtime.auth_enabled != s.AUTH_ENABLED:
        raise RuntimeError(
            f"this app was created with AUTH_ENABLED={runtime.auth_enabled}, and the "
            f"settings now say {s.AUTH_ENABLED}: call create_app() with the settings in place"
        )
    if container.replicas() is not None and not runtime.read_your_writes:
        raise RuntimeError(
            "this app was created without replicas, and the container now has some: call "
            "create_app() with DATABASE_REPLICA_URLS (or the replica_engines override) in place"
        )
    anyio.to_thread.current_default_thread_limiter().total_tokens = s.THREADPOOL_SIZE
    runtime.max_concurrent_requests = s.MAX_CONCURRENT_REQUESTS
    _log_concurrency(s, container)
    setup = migrations.schema_setup(s, container.engine().url)
    if setup == "migrate":
        await anyio.to_thread.run_sync(migrations.upgrade)
    elif setup == "create_all":
        await anyio.to_thread.run_sync(ensure_database_schema)
    with _serving(runtime, s, container):
        try:
            async with _tracing(container), _monitoring(container.replicas()):
                yield
        finally:
            await dispose_engines(container)


def replicas_configured(c: Container = container) -> bool:
    """Whether reads may go to replicas (DATABASE_REPLICA_URLS, or an override of
    ``replica_engines``), without building anything."""
    return bool(c.settings().DATABASE_REPLICA_URLS or c.replica_engines.overridden)


def reset_request_path(c: Container = container) -> None:
    """Build the singletons that requests share (the replica set, the gates and the units of
    work that queue at them) afresh at next use, from the current settings and engines: the
    app does this at startup, so it never serves with what a previous run built."""
    for provider in (c.replicas, c.gates, c.reader, c.writer, c.idempotency_keys):
        provider.reset()


async def dispose_engines(c: Container = container) -> None:
    """Close the pools of the container's own engines; overrides belong to whoever set them."""
    if not c.replica_engines.overridden:
        for replica_engine in c.replica_engines():
            replica_engine.dispose()
        c.replica_engines.reset()
    if not c.async_engine.overridden:
        await c.async_engine().dispose()
        c.async_engine.reset()
    if not c.engine.overridden:
        c.engine().dispose()
        c.engine.reset()


def _log_concurrency(s: Settings, c: Container) -> None:
    # uvicorn's server log, next to "Application startup complete": visible by default.
    logging.getLogger("uvicorn.error").info(
        "concurrency: %d requests at once (MAX_CONCURRENT_REQUESTS), %d threads "
        "(THREADPOOL_SIZE), %d reads (MAX_CONCURRENT_READS) and %d writes "
        "(MAX_CONCURRENT_WRITES) at once, %gs longest wait for either (DB_QUEUE_TIMEOUT)",
        s.MAX_CONCURRENT_REQUESTS,
        s.THREADPOOL_SIZE,
        c.reader().gate.capacity,
        c.writer().gate.capacity,
        s.DB_QUEUE_TIMEOUT,
    )


@contextmanager
def _serving(runtime: Runtime, s: Settings, c: Container) -> Iterator[None]:
    """From startup to shutdown: ``runtime.draining`` and ``runtime.metrics_enabled``; with
    metrics on, the container's engines feed ``db_connections_in_use`` and this process writes
    its figures every ``metrics.FLUSH_SECONDS``. Leave it after the engines are disposed:
    the last figures are written, then this process's live gauges are dropped."""
    runtime.metrics_enabled = s.METRICS_ENABLED
    runtime.metrics_token = s.METRICS_TOKEN
    if s.METRICS_ENABLED:
        metrics.forget_dead_processes()
        metrics.instrument_engine(c.engine(), "engine")
        metrics.instrument_engine(c.async_engine().sync_engine, "async_engine")
        replicas: ReplicaSet | None = c.replicas()
        for replica in replicas.replicas if replicas is not None else ():
            metrics.instrument_engine(replica.engine, replica.name)
        metrics.start_flushing()
    try:
        with on_signals(runtime):
            yield
    finally:
        if s.METRICS_ENABLED:
            metrics.stop_flushing()
            metrics.mark_process_dead()


@asynccontextmanager
async def _tracing(c: Container) -> AsyncIterator[None]:
    """With OTEL_TRACES_EXPORTER (docs/tracing.md): the SDK started in this process (each
    worker of ``--workers N`` starts its own, after the fork), the SQL of every engine
    traced; at shutdown, what is queued is exported. Off: nothing is imported."""
    if not tracing.wanted():
        yield
        return
    replicas: ReplicaSet | None = c.replicas()
    engines = [
        ("primary", c.engine()),
        ("primary", c.async_engine().sync_engine),
        *((r.name, r.engine) for r in (replicas.replicas if replicas is not None else ())),
    ]
    tracing.start(engines)
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(tracing.shutdown)


@asynccontextmanager
async def _monitoring(replicas: ReplicaSet | None) -> AsyncIterator[None]:
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


@contextmanager
def on_signals(runtime: Runtime) -> Iterator[None]:
    """``runtime.draining`` is False until SIGTERM or SIGINT reaches the process, then True;
    the handler that was there before (the server's) runs as well."""
    runtime.draining = False
    if threading.current_thread() is not threading.main_thread():
        # Signals are handled in the main thread only: an app started by a TestClient.
        yield
        return
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def drain(sig: int, frame: FrameType | None) -> None:
        runtime.draining = True
        handler: Callable[[int, FrameType | None], Any] | int | None = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in SIGNALS:
        signal.signal(sig, drain)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if signal.getsignal(number) is drain:
                signal.signal(number, handler)
