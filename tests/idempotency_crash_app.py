"""The app that tests/test_idempotency.py kills: ``app.main``'s, whose writer SIGKILLs its own
process right after a commit when the request carries ``X-Test-Crash-After-Commit`` (the
moment between a change being durable and its answer being sent). Only this test module
serves it."""

import os
import signal
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from dependency_injector import providers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.main import create_app
from app.units.sizing import write_batch_size
from app.units.writer import Writer
from containers import container

_crash = ContextVar("crash_after_commit", default=False)


class _CrashAfterCommit(Writer):
    def _run(self, fn: Callable[..., Any], args: Any, kwargs: Any, budget: float = 0) -> Any:
        result = super()._run(fn, args, kwargs, budget)  # committed
        if _crash.get():
            os.kill(os.getpid(), signal.SIGKILL)
        return result


class _Flag:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _crash.set(any(name == b"x-test-crash-after-commit" for name, _ in scope["headers"]))
        await self.app(scope, receive, send)


container.writer.override(
    providers.ThreadSafeSingleton(
        _CrashAfterCommit,
        container.gates.provided.write,
        container.session.provider,
        batch_size=providers.Callable(write_batch_size, container.settings, container.engine),
    )
)
app = _Flag(create_app())
