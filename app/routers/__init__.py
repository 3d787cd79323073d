"""HTTP routers, found by package: a module here that defines ``router`` is mounted.

``mount(app)`` includes them in module-name order, except that a module which sets
``AUTH_ONLY = True`` is mounted first, and only with AUTH_ENABLED on (``/users/me`` must match
before ``/users/{user_id}``; with auth off the tutorial's contract has no such route). The
lifespan wires every module of this package.
"""

import importlib
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

import annotated_types
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.deps import REQUIRE_TOKEN, policy
from app.web.errors import responses

__all__ = ["mount", "policy_table", "routers"]


def routers(*, auth_enabled: bool) -> list[APIRouter]:
    """Every module's ``router``, in the order ``mount`` includes them."""
    found: list[tuple[bool, str, APIRouter]] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        router = getattr(module, "router", None)
        auth_only = bool(getattr(module, "AUTH_ONLY", False))
        if isinstance(router, APIRouter) and (auth_enabled or not auth_only):
            found.append((not auth_only, info.name, router))
    return [router for *_, router in sorted(found, key=lambda f: f[:2])]


def mount(app: FastAPI, *, auth_enabled: bool) -> None:
    """Include every router; with auth on, a route that declares no policy (``Public``,
    ``Caller``, ``Owner``) needs a valid token."""
    for router in routers(auth_enabled=auth_enabled):
        _check_ids(router)
        unguarded = [
            route
            for route in router.routes
            if isinstance(route, APIRoute) and policy(route.dependant, route.openapi_extra) is None
        ]
        if not (auth_enabled and unguarded):
            app.include_router(router)  # nothing added per request
            continue
        for route in router.routes:  # one at a time, to keep their order
            deny = route in unguarded
            app.include_router(
                APIRouter(routes=[route]),
                dependencies=[REQUIRE_TOKEN] if deny else None,
                responses=responses(401) if deny else None,
            )


def policy_table() -> str:
    """Who may call each operation with AUTH_ENABLED on, as a Markdown table (``app routes``)."""
    rows = ["| operation | with auth on | |", "|---|---|---|"]
    for router in routers(auth_enabled=True):
        for route in router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                summary = re.split(r"[.;]\s", " ".join(route.description.split()))[0].rstrip(".")
                for method in sorted(route.methods or ()):
                    access = policy(route.dependant, route.openapi_extra) or "authenticated"
                    rows.append(f"| `{method} {route.path}` | {access} | {summary} |")
    return "\n".join(rows)


def _check_ids(router: APIRouter) -> None:
    """Refuse an ``int`` path parameter without bounds: a huge id would reach the database,
    which cannot take it (a 500). ``app.routers.paging.Id`` is the bounded one."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        for parameter in _path_params(route.dependant):
            info = parameter.field_info
            bounds = [type(m) for m in info.metadata]
            low = annotated_types.Ge in bounds or annotated_types.Gt in bounds
            high = annotated_types.Le in bounds or annotated_types.Lt in bounds
            if info.annotation is int and not (low and high):
                raise TypeError(
                    f"{route.path}: path parameter {parameter.name} is an int without bounds; "
                    "declare it as app.routers.paging.Id"
                )


def _path_params(dependant: Dependant) -> Iterator[Any]:
    yield from dependant.path_params
    for dependency in dependant.dependencies:
        yield from _path_params(dependency)
