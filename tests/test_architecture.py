"""The shape of the code: imports flow one way, every module imports on its own, and every
endpoint is async, wired and registered, so a new resource cannot half-register."""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, cast

import pytest
from dependency_injector.wiring import inject
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

import app as app_package
import containers
from app import base, database, routers
from app.deps import AsyncProvide
from app.main import app
from app.services import UserService
from app.testing import routes
from app.testing.plugin import settings_free_environ
from containers import Container, container

ROOT = Path(containers.__file__).parent
SCRIPTS = {"app.migrations.env"}
"""Files that Alembic runs as scripts: importing them outside a migration is an error."""


def project_modules() -> dict[str, Path]:
    """Every module of ``app`` and ``containers``, by name."""
    modules = {"containers": ROOT / "containers.py"}
    package = Path(app_package.__file__).parent
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that importing ``name`` runs, counting imports inside functions and
    the packages (``__init__``) that each import passes through, except ``name``'s own
    packages: Python has started those before ``name`` runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    with_packages = {
        ".".join(module.split(".")[:n]) for module in found for n in range(1, module.count(".") + 2)
    }
    own = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 2)}
    return (with_packages & known) - own


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_flow_one_way_counting_imports_inside_functions() -> None:
    modules = project_modules()
    graph = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    assert cycles(graph) == []
    # The leaves import nothing of the app but other leaves (and the packages they are in).
    leaves = {"app.config", "app.base", "app.emails", "app.exceptions", "app.db.urls"}
    leaves |= {"app.outbox.config"}  # the outbox's part of Settings
    for leaf in leaves:
        assert graph[leaf] <= {"app", "app.db", "app.outbox"} | leaves, (leaf, graph[leaf])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


# One interpreter imports every module outside the project that the project's modules load
# (listed by a first child that imports them all), then forks once per project module: each
# child imports its module first, as a fresh interpreter would, without paying again for
# FastAPI, SQLAlchemy and pydantic (~0.5 s per module).
_IMPORT_EACH_IN_A_FORK = """
import importlib, os, sys, traceback

def ours(module):
    return module.split(".")[0] in ("app", "containers")

def outside():
    for name in sys.argv[1:]:
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # its own child reports it
    print("\\n".join(m for m in list(sys.modules) if not ours(m)), flush=True)

read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(write, 1)
    try:
        outside()
    finally:
        os._exit(0)
os.close(write)
with os.fdopen(read) as listing:
    preload = listing.read().split()
os.waitpid(pid, 0)
for module in preload:
    try:
        importlib.import_module(module)
    except Exception:
        pass  # the child that needs it will say why
assert not [m for m in sys.modules if ours(m)], "a third-party import ran project code"
for name in sys.argv[1:]:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            print(f"FAILED {name}:\\n{traceback.format_exc()}", flush=True)
            os._exit(1)
        os._exit(0)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(f"{name} {status}", flush=True)
"""


def test_every_module_imports_first_in_a_fresh_interpreter(tmp_path: Path) -> None:
    modules = project_modules()
    names = sorted(set(modules) - SCRIPTS)
    env = settings_free_environ(DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}")
    # Not measured by coverage (make test): a module's import adds no line the suite misses.
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_IN_A_FORK, *names],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    statuses = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines() if " " in line)
    failures = [line for line in result.stdout.splitlines() if not line.endswith(" 0")]
    assert failures == []
    assert sorted(statuses) == names
    assert len(names) > 20
    assert list(tmp_path.iterdir()) == []  # and none of them opened the database


def test_the_seed_api_is_re_exported_unchanged() -> None:
    from app.database import (  # noqa: F401
        AsyncSessionLocal,
        Base,
        SessionLocal,
        async_engine,
        engine,
        ensure_database_schema,
    )

    assert database.Base is base.Base
    assert Base is base.Base


def test_every_endpoint_and_dependency_is_async() -> None:
    assert routes.sync_dependencies(app) == []


def test_every_endpoint_that_takes_a_container_object_is_wired(schema: Engine) -> None:
    for _ in range(3):  # once, however many times the app starts
        with TestClient(app):
            assert routes.unwired_endpoints(app, container) == []
            assert cast(list[ModuleType], container.wired_to_packages) == [routers]


def test_every_router_module_is_mounted_auth_only_ones_first_and_with_auth_on_only() -> None:
    names = [info.name for info in pkgutil.iter_modules(routers.__path__)]
    modules = [importlib.import_module(f"app.routers.{name}") for name in names]
    with_router = [m for m in modules if hasattr(m, "router")]
    auth_only = [m.router for m in with_router if getattr(m, "AUTH_ONLY", False)]
    assert auth_only  # /token and /users/me
    mounted = routers.routers(auth_enabled=True)
    assert mounted[: len(auth_only)] == auth_only
    assert sorted(map(id, mounted)) == sorted(id(m.router) for m in with_router)
    assert routers.routers(auth_enabled=False) == mounted[len(auth_only) :]


def test_the_guards_report_what_is_wrong() -> None:
    bad = FastAPI()

    def sync_dependency() -> int:
        return 1

    @bad.get("/plain")
    def plain(users: Annotated[UserService, Depends(AsyncProvide[Container.user_service])]) -> None:
        """A sync endpoint, not @inject-ed."""

    @bad.get("/thread")
    @inject
    async def thread(
        n: Annotated[int, Depends(sync_dependency)],
        users: Annotated[UserService, Depends(AsyncProvide[Container.user_service])],
    ) -> None:
        """Injected, but from a module nobody wired, with a sync dependency."""

    assert routes.sync_dependencies(bad) == [
        "GET /plain: the endpoint is not async def",
        f"GET /thread: dependency {sync_dependency!r} runs in a thread "
        "(make it async; for a container object use app.deps.AsyncProvide)",
    ]
    assert routes.unwired_endpoints(bad, container) == [
        "GET /plain: users need @inject",
        f"GET /thread: module {__name__} is not wired (put it in app.routers)",
    ]


@pytest.fixture
def unwired(schema: Engine) -> None:
    """The container unwired, as dependency-injector's docs teach tests to do."""
    with TestClient(app):
        pass  # wired by a first startup
    container.unwire()


def test_an_app_started_after_unwire_serves_normally(unwired: None) -> None:
    with TestClient(app) as client:
        created = client.post("/users/", json={"email": "u@example.com", "password": "pw"})
        assert created.status_code == 200, created.text
        user_id = created.json()["id"]
        assert client.post(f"/users/{user_id}/items/", json={"title": "t"}).status_code == 200
        assert client.get(f"/users/{user_id}").json()["items"][0]["title"] == "t"
        assert client.get("/items/").status_code == 200
        assert client.get("/health").json() == {"status": "ok"}
    assert routes.unwired_endpoints(app, container) == []
