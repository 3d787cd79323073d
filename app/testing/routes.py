"""Guards for a growing app: each returns what is wrong, as sentences, or nothing.

assert checks.sync_dependencies(app) == []
assert checks.unwired_endpoints(app, container) == []
"""

import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Annotated, Any, NamedTuple, cast, get_args, get_origin

from dependency_injector import containers
from dependency_injector.wiring import Provide
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.params import Depends
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from app import deps

__all__ = [
    "Access",
    "ExampleRequest",
    "access",
    "api_routes",
    "example_requests",
    "sync_dependencies",
    "unwired_endpoints",
]


def api_routes(app: FastAPI) -> Iterator[RouteContext]:
    """Every operation of ``app``'s API, as included (the docs pages' own routes are not)."""
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            yield context


class ExampleRequest(NamedTuple):
    method: str
    path: str
    body: dict[str, Any] | None
    template: str
    form: bool = False
    """``body`` is form-encoded (``data=``), not JSON."""

    def send(self, client: Any, **kwargs: Any) -> Any:
        """Send it with a ``TestClient`` (or an httpx client): ``send(client, headers=...)``."""
        key = "data" if self.form else "json"
        return client.request(self.method, self.path, **{key: self.body}, **kwargs)


_CONTENT_TYPES = {"application/json": False, "application/x-www-form-urlencoded": True}


def example_requests(
    app: FastAPI, path_values: Mapping[str, int] | int = 1
) -> list[ExampleRequest]:
    """One valid request per operation, from ``app``'s OpenAPI schema: each path parameter
    set from ``path_values`` (by name, or one value for all), the body to the first example
    of its schema (``json_schema_extra``)."""
    schema = app.openapi()
    components = schema.get("components", {}).get("schemas", {})
    requests = []
    for template, operations in schema["paths"].items():
        path = re.sub(
            r"\{([^}]+)\}",
            lambda m: str(path_values if isinstance(path_values, int) else path_values[m[1]]),
            template,
        )
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            body, form = None, False
            for content_type, is_form in _CONTENT_TYPES.items():
                if content_type in content:
                    ref = content[content_type]["schema"]["$ref"].rpartition("/")[2]
                    examples = components[ref].get("examples")
                    if not examples:
                        raise LookupError(f"schema {ref} has no example: add json_schema_extra")
                    body, form = dict(examples[0]), is_form
            requests.append(ExampleRequest(method.upper(), path, body, template, form))
    return requests


Access = deps.Policy


def access(route: RouteContext) -> Access:
    """Who may call the operation with AUTH_ENABLED on (``app.deps.policy``); a route that
    declares nobody needs a token (deny by default)."""
    original = cast(APIRoute, route.original_route)
    return deps.policy(route.dependant, original.openapi_extra) or "authenticated"


def _label(route: RouteContext) -> str:
    return f"{','.join(sorted(route.methods or ()))} {route.path}"


def _is_async(call: Callable[..., Any] | None) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    dunder_call = getattr(call, "__call__", None)  # noqa: B004  (an instance's method)
    return not inspect.isclass(call) and (
        inspect.iscoroutinefunction(dunder_call) or inspect.isasyncgenfunction(dunder_call)
    )


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def sync_dependencies(app: FastAPI) -> list[str]:
    """Endpoints and dependencies FastAPI would run in the thread pool: a thread hop each,
    per request, for nothing (a plain ``Provide`` marker is one)."""
    problems = []
    for route in api_routes(app):
        if not _is_async(route.endpoint):
            problems.append(f"{_label(route)}: the endpoint is not async def")
        for dependency in _dependencies(route.dependant):
            if not _is_async(dependency.call):
                problems.append(
                    f"{_label(route)}: dependency {dependency.call!r} runs in a thread "
                    "(make it async; for a container object use app.deps.AsyncProvide)"
                )
    return problems


def _markers(endpoint: Callable[..., Any]) -> list[str]:
    """Parameters of ``endpoint`` that ``Depends`` on a dependency-injector marker."""
    original = inspect.unwrap(endpoint)
    names: list[str] = []
    for name, parameter in inspect.signature(original).parameters.items():
        annotation = parameter.annotation
        extras = get_args(annotation)[1:] if get_origin(annotation) is Annotated else ()
        for extra in (*extras, parameter.default):
            if isinstance(extra, Depends) and isinstance(extra.dependency, cast(type, Provide)):
                names.append(name)
    return names


def unwired_endpoints(app: FastAPI, container: containers.Container) -> list[str]:
    """Endpoints that take a container object but would receive the bare marker: not
    decorated with ``@inject``, or in a module the container has not wired."""
    wired = {module.__name__ for module in cast(list[ModuleType], container.wired_to_modules)}
    for package in cast(list[ModuleType], container.wired_to_packages):
        wired.update(
            info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        )
    problems = []
    for route in api_routes(app):
        endpoint = route.endpoint
        markers = _markers(endpoint) if endpoint else []
        if not markers:
            continue
        if not hasattr(endpoint, "__wrapped__"):
            problems.append(f"{_label(route)}: {', '.join(markers)} need @inject")
        elif endpoint.__module__ not in wired:
            problems.append(
                f"{_label(route)}: module {endpoint.__module__} is not wired "
                "(put it in app.routers)"
            )
    return problems
