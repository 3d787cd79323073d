"""The suite runs on app.testing.plugin's fixtures (loaded by ``-p`` in pyproject.toml): each
test gets its own database (SQLite, or a PostgreSQL server named by ``TEST_DATABASE_URL``)
by overriding the container's providers.

Helpers that only this project's tests need live here: ``from tests.conftest import ...``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from app.testing.plugin import settings_free_environ

APP = Path(sys.executable).with_name("app")
UNAVAILABLE = {"detail": "Database is busy or unavailable, please retry"}


def run_app(
    *args: str, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``app ARGS`` with only the settings in ``env`` (and in ``cwd``'s .env or config.yml)."""
    return subprocess.run(
        [str(APP), *args],
        env=settings_free_environ(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``), the tests of a module that shares its
    servers (module-scoped fixtures) run on one worker, so that they start once; the tests
    marked slow or serial, if any are selected, run one after the other on one worker (make
    test runs them in a pytest of their own, without xdist)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group("serial"))
        elif isinstance(item, pytest.Function) and getattr(item.module, "SHARES_SERVERS", False):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
