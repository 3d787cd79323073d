"""app.testing.plugin as another project loads it: pytest-asyncio in strict mode, and the
caller's environment, .env and config.yml all saying otherwise than the defaults."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

from app.config import Settings

USER_TESTS = """
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import User
from app.testing.plugin import bearer, count_rows


def test_settings_are_the_defaults_plus_the_database(settings: Settings) -> None:
    assert settings.AUTH_ENABLED is False
    assert settings.SECRET_KEY is None
    assert settings.MAX_BODY_BYTES == Settings.model_fields["MAX_BODY_BYTES"].default
    assert settings.CORS_ORIGINS == []
    assert settings.DATABASE_URL.startswith("sqlite:///")


def test_signup_and_list(client: TestClient) -> None:
    response = client.post("/users/", json={"email": "a@example.com", "password": "pw"})
    assert response.status_code == 200
    assert client.get("/users/").json() == [response.json()]
    assert "access-control-allow-origin" not in client.get("/users/").headers
    assert count_rows(User) == 1


def test_auth_client_and_bearer(auth_client: TestClient) -> None:
    user = auth_client.post("/users/", json={"email": "b@example.com", "password": "pw"}).json()
    assert auth_client.get("/users/me").status_code == 401
    me = auth_client.get("/users/me", headers=bearer(user["id"]))
    assert me.json()["email"] == "b@example.com"


def test_db_session_sees_the_apps_writes(client: TestClient, db_session: Session) -> None:
    client.post("/users/", json={"email": "c@example.com", "password": "pw"})
    assert db_session.query(User).count() == 1


@pytest.mark.asyncio
async def test_async_engine_in_strict_mode(async_engine: AsyncEngine) -> None:
    async with async_engine.connect() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1
"""


def test_user_tests_pass_whatever_the_callers_settings_say(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(32)
    (tmp_path / "test_mine.py").write_text(USER_TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    (tmp_path / ".env").write_text(
        f"AUTH_ENABLED=true\nSECRET_KEY={key}\nMAX_BODY_BYTES=10\n"
        "DATABASE_URL=postgresql://nobody@127.0.0.1:1/nothing\n"
    )
    (tmp_path / "config.yml").write_text("CORS_ORIGINS: https://elsewhere.example\n")
    environ = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    # SQLite whatever this run's backend is: the subject is the settings, not the database.
    for name in (
        "TEST_DATABASE_URL",
        "TEST_PGBOUNCER_URL",
        "PYTEST_ADDOPTS",
        "PYTEST_XDIST_WORKER",
    ):
        environ.pop(name, None)
    environ |= {"AUTH_ENABLED": "true", "SECRET_KEY": key, "CORS_ORIGINS": "https://x.example"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "app.testing.plugin",
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout, result.stdout
