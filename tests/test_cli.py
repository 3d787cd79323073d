"""The ``app`` command, run as users run it: a subprocess with the environment as config."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine, inspect

from app.config import Settings
from app.main import create_app
from app.testing import routes
from app.testing.plugin import settings_free_environ, with_auth
from app.testing.processes import free_port
from app.testing.server import LiveServer
from containers import container
from tests.conftest import APP, run_app


def tables(database_url: str) -> set[str]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_init_db_creates_the_tables(database_url: str, tmp_path: Path) -> None:
    assert not {"users", "items"} & tables(database_url)
    result = run_app("init-db", env={"DATABASE_URL": database_url}, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "app:" in result.stdout
    assert {"users", "items"} <= tables(database_url)
    again = run_app("init-db", env={"DATABASE_URL": database_url}, cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr


def test_init_db_reports_a_missing_sqlite_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = run_app(
        "init-db", env={"DATABASE_URL": f"sqlite:///{missing}/app.db"}, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr
    assert not missing.exists()


def test_serve_help(tmp_path: Path) -> None:
    result = run_app(
        "serve", "--help", env={"DATABASE_URL": "sqlite:///./app.db"}, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for option in (
        "--host",
        "--port",
        "--workers",
        "--log-level",
        "--access-log",
        "--timeout-graceful-shutdown",
        "--proxy-headers",
        "--forwarded-allow-ips",
    ):
        assert option in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "client"),
    [
        ((), "203.0.113.7:0"),  # PROXY_HEADERS defaults on, trusting 127.0.0.1
        (("--no-proxy-headers",), "127.0.0.1:"),
        (("--proxy-headers", "--forwarded-allow-ips", "192.0.2.1"), "127.0.0.1:"),
    ],
)
def test_serve_takes_the_client_address_from_trusted_proxies_only(
    tmp_path: Path, flags: tuple[str, ...], client: str
) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", "LOG_FORMAT": "json"}
    with LiveServer(env, serve=True, extra_args=flags) as server:
        response = httpx2.get(
            f"{server.url}/health/live",
            headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "proxied"},
        )
        assert response.status_code == 200
        server.stop()
    (line,) = [
        json.loads(line)
        for line in server.log_text().splitlines()
        if '"request_id": "proxied"' in line
    ]
    assert line["client"].startswith(client)


def test_routes_prints_the_policy_of_every_operation_the_app_serves_with_auth_on(
    settings: Settings, tmp_path: Path
) -> None:
    result = run_app("routes", env={}, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = {
        (path, method): access
        for method, path, access in re.findall(
            r"^\| `(\w+) ([^`]+)` \| (\w+) \|", result.stdout, re.M
        )
    }
    with container.settings.override(with_auth(settings)):
        app = create_app()
    served = {
        (str(r.path), method): routes.access(r)
        for r in routes.api_routes(app)
        for method in r.methods or ()
    }
    assert printed == served
    assert set(served.values()) == {"public", "authenticated", "owner"}


def test_serve_listens_on_port_by_default(tmp_path: Path) -> None:
    """The image's exec-form command has no shell to expand $PORT: `app serve` reads it."""
    port = free_port()
    env = settings_free_environ(DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}", PORT=str(port))
    server = subprocess.Popen([str(APP), "serve"], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx2.get(f"http://127.0.0.1:{port}/health/live").status_code == 200
                break
            except httpx2.TransportError:
                assert server.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
