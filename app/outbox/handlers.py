"""What ``app worker`` runs for an event: the handlers registered for its type.

``@handler("item.created")`` (or ``"item.*"``, or ``"*"`` for every event) registers an async
function taking the ``Event``; it succeeds by returning and fails by raising (the event is
then retried with backoff, and parked as dead after OUTBOX_MAX_ATTEMPTS). Each handler has a
name, recorded once it succeeded, so a retry runs only the handlers that failed. Modules of
``app.jobs`` are imported by the worker (``discover``): a job needs no other registration.
"""

import fnmatch
import importlib
import json
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

__all__ = ["Event", "Handler", "Registry", "discover", "handler", "registry"]


@dataclass(frozen=True)
class Event:
    id: str
    """``msg_...``: the same on every attempt; deduplicate on it."""
    type: str
    body: str
    """The JSON payload as stored: ``{"type", "timestamp", "data"}``."""
    attempt: int
    created_at: float

    @cached_property
    def payload(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Event], Awaitable[None]]


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, Handler]] = {}

    def add(self, pattern: str, fn: Handler, *, name: str | None = None) -> None:
        """Run ``fn`` for the events whose type matches ``pattern`` (fnmatch: ``*``)."""
        name = name or f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"
        if name in self._entries:
            raise ValueError(f"a handler named {name!r} is already registered")
        self._entries[name] = (pattern, fn)

    def handler(self, pattern: str, *, name: str | None = None) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.add(pattern, fn, name=name)
            return fn

        return register

    def for_type(self, event_type: str) -> list[tuple[str, Handler]]:
        """(name, handler) of every handler for ``event_type``, in registration order."""
        return [
            (name, fn)
            for name, (pattern, fn) in self._entries.items()
            if fnmatch.fnmatchcase(event_type, pattern)
        ]

    def names(self) -> list[str]:
        return list(self._entries)


registry = Registry()
"""The process's handlers: the jobs' and, in ``app worker``, the webhooks'."""


def handler(pattern: str, *, name: str | None = None) -> Callable[[Handler], Handler]:
    """``@handler("item.created")``: register the function in ``registry``."""
    return registry.handler(pattern, name=name)


def discover(package: str = "app.jobs") -> list[str]:
    """Import every module of ``package`` (their ``@handler``s register); their names."""
    root = importlib.import_module(package)
    names = [f"{package}.{info.name}" for info in pkgutil.iter_modules(root.__path__)]
    for name in names:
        importlib.import_module(name)
    return names
