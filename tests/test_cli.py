"""The ``app`` command, run as users run it: a subprocess with the environment as config."""

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

from app.config import Settings

APP = Path(sys.executable).with_name("app")


def run_app(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    return subprocess.run(
        [str(APP), *args],
        env={**env, "DATABASE_URL": database_url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tables(database_url: str) -> set[str]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_init_db_creates_the_tables(database_url: str, tmp_path: Path) -> None:
    assert not {"users", "items"} & tables(database_url)
    result = run_app("init-db", database_url=database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "app:" in result.stdout
    assert {"users", "items"} <= tables(database_url)
    again = run_app("init-db", database_url=database_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_init_db_reports_a_missing_sqlite_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = run_app("init-db", database_url=f"sqlite:///{missing}/app.db", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr
    assert not missing.exists()


def test_serve_help(tmp_path: Path) -> None:
    result = run_app("serve", "--help", database_url="sqlite:///./app.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--workers", "--log-level"):
        assert option in result.stdout
    assert list(tmp_path.iterdir()) == []
