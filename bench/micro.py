"""Sections 1 and 2: the container's session factories and provider resolution, in-process."""

import asyncio
import gc
import sys
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

from dependency_injector.wiring import Provide, inject
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import sessionmaker

import app.database as database
from app.config import Settings
from app.database import AsyncSessionLocal, SessionLocal
from app.services import ItemService
from bench.report import Table, Target
from containers import Container, container

__all__ = ["provider_table", "session_table", "use_database"]

SESSION_TARGET = 1.15


@inject
def _wired(items: ItemService = Provide[Container.item_service]) -> ItemService:
    return items


def _direct(items: ItemService) -> ItemService:
    return items


def _best(timers: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` rounds for each timer; rounds interleave to share the noise."""
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer())
    return best


def _sync_timer(stmt: str, number: int, namespace: dict[str, Any]) -> Callable[[], float]:
    timer = timeit.Timer(stmt, globals=namespace)
    return lambda: timer.timeit(number) / number


def _async_timer(
    factory: Callable[[], AsyncSession], number: int, loop: asyncio.AbstractEventLoop
) -> Callable[[], float]:
    async def run() -> float:
        start = perf_counter()
        for _ in range(number):
            session = factory()
            await session.close()
        return (perf_counter() - start) / number

    def timed() -> float:
        gc.disable()
        try:
            return loop.run_until_complete(run())
        finally:
            gc.enable()

    return timed


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs"


def _ns(seconds: float) -> str:
    return f"{seconds * 1e9:.0f} ns"


def use_database(path: Path) -> None:
    """Point the container's (not overridden) engine providers at the SQLite file ``path``."""
    container.settings.reset_override()
    # SQLITE_SYNCHRONOUS is pinned: a .env must not set the app's rows apart from raw sqlite3.
    container.settings.override(
        Settings(DATABASE_URL=f"sqlite:///{path}", SQLITE_SYNCHRONOUS="NORMAL")
    )
    container.engine.reset()
    container.async_engine.reset()


def session_table(folder: Path, *, quick: bool) -> Table:
    use_database(folder / "micro.db")
    number, repeat = (2_000, 5) if quick else (5_000, 30)
    plain = sessionmaker(database.engine, expire_on_commit=False)
    plain_async = async_sessionmaker(database.async_engine, expire_on_commit=False)
    namespace = {"SessionLocal": SessionLocal, "plain": plain}
    loop = asyncio.new_event_loop()
    try:
        best = _best(
            {
                "app": _sync_timer("SessionLocal().close()", number, namespace),
                "plain": _sync_timer("plain().close()", number, namespace),
                "app async": _async_timer(AsyncSessionLocal, number, loop),
                "plain async": _async_timer(plain_async, number, loop),
            },
            repeat,
        )
    finally:
        loop.close()
    table = Table(
        "1. Session factory cost (per session, best of rounds)",
        ("benchmark", "this app", "plain", "ratio", "target", "met"),
    )
    for name, app_key, plain_key, plain_name in (
        ("SessionLocal() + close()", "app", "plain", "sessionmaker"),
        ("AsyncSessionLocal() + await close()", "app async", "plain async", "async_sessionmaker"),
    ):
        ratio = best[app_key] / best[plain_key]
        met = ratio <= SESSION_TARGET
        table.add(
            f"{name} vs {plain_name}",
            _us(best[app_key]),
            _us(best[plain_key]),
            f"{ratio:.2f}x",
            f"<= {SESSION_TARGET:.2f}x",
            "yes" if met else "NO",
        )
        table.targets.append(Target(f"{name} vs {plain_name}", f"<= {SESSION_TARGET}x", met))
    return table


def provider_table(*, quick: bool) -> Table:
    container.wire(modules=[sys.modules[__name__]])
    number, repeat = (20_000, 3) if quick else (50_000, 20)
    engine = database.engine
    plain_module = types.ModuleType("plain_database")
    plain_module.engine = engine  # type: ignore[attr-defined]
    namespace = {
        "database": database,
        "plain_module": plain_module,
        "wired": _wired,
        "direct": _direct,
        "ItemService": ItemService,
    }
    best = _best(
        {
            "engine": _sync_timer("database.engine", number, namespace),
            "plain engine": _sync_timer("plain_module.engine", number, namespace),
            "wired": _sync_timer("wired()", number, namespace),
            "direct": _sync_timer("direct(ItemService())", number, namespace),
        },
        repeat,
    )
    table = Table(
        "2. Provider resolution (per access, best of rounds)",
        ("benchmark", "this app", "direct", "ratio"),
        notes=[
            "Direct access is a plain module attribute / a hand-built service passed in; "
            "no target: these are nanoseconds next to the microseconds of section 1."
        ],
    )
    table.add(
        "app.database.engine vs module attribute",
        _ns(best["engine"]),
        _ns(best["plain engine"]),
        f"{best['engine'] / best['plain engine']:.1f}x",
    )
    table.add(
        "@inject call (Provide[Container.item_service]) vs f(ItemService())",
        _ns(best["wired"]),
        _ns(best["direct"]),
        f"{best['wired'] / best['direct']:.1f}x",
    )
    return table
