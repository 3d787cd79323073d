"""Settings: defaults < config.yml < .env < environment; invalid values name the setting."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings, async_url
from tests.conftest import run_app


@pytest.fixture(autouse=True)
def clean_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (no config.yml, no .env) and no setting in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_defaults_without_any_file_or_variable() -> None:
    s = Settings()
    assert s.DATABASE_URL == "sqlite:///./app.db"
    assert s.ASYNC_DATABASE_URL is None
    assert s.DB_POOL_SIZE == 5
    assert s.SQLITE_SYNCHRONOUS == "NORMAL"
    assert s.CREATE_SCHEMA is None
    assert s.MAX_CONCURRENT_READS is None


def test_config_yml_overrides_defaults(clean_directory: Path) -> None:
    write(clean_directory / "config.yml", "DB_POOL_SIZE: 7\nSQLITE_SYNCHRONOUS: FULL\n")
    s = Settings()
    assert s.DB_POOL_SIZE == 7
    assert s.SQLITE_SYNCHRONOUS == "FULL"
    assert s.DB_MAX_OVERFLOW == 10


def test_dotenv_overrides_config_yml_field_by_field(clean_directory: Path) -> None:
    write(clean_directory / "config.yml", "DB_POOL_SIZE: 7\nDB_MAX_OVERFLOW: 3\n")
    write(clean_directory / ".env", "DB_POOL_SIZE=8\n")
    s = Settings()
    assert s.DB_POOL_SIZE == 8
    assert s.DB_MAX_OVERFLOW == 3


def test_environment_overrides_dotenv_and_config_yml(
    clean_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_directory / "config.yml", "DB_POOL_SIZE: 7\nTHREADPOOL_SIZE: 11\n")
    write(clean_directory / ".env", "DB_POOL_SIZE=8\nTHREADPOOL_SIZE=12\n")
    monkeypatch.setenv("DB_POOL_SIZE", "9")
    s = Settings()
    assert s.DB_POOL_SIZE == 9
    assert s.THREADPOOL_SIZE == 12


def test_init_arguments_override_everything(
    clean_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_directory / "config.yml", "DB_POOL_SIZE: 7\n")
    monkeypatch.setenv("DB_POOL_SIZE", "9")
    assert Settings(DB_POOL_SIZE=10).DB_POOL_SIZE == 10


def test_database_url_from_the_environment_wins(
    clean_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_directory / "config.yml", "DATABASE_URL: sqlite:///./from-yml.db\n")
    write(clean_directory / ".env", "DATABASE_URL=sqlite:///./from-dotenv.db\n")
    assert Settings().DATABASE_URL == "sqlite:///./from-dotenv.db"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example:5432/app")
    s = Settings()
    assert s.DATABASE_URL == "postgresql://u:p@db.example:5432/app"
    assert async_url(s) == "postgresql+psycopg://u:p@db.example:5432/app"


def test_a_missing_config_yml_is_fine(clean_directory: Path) -> None:
    write(clean_directory / ".env", "ECHO_SQL=true\n")
    assert not (clean_directory / "config.yml").exists()
    assert Settings().ECHO_SQL is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_POOL_SIZE", "abc"),
        ("DB_POOL_SIZE", "0"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("DB_QUEUE_TIMEOUT", "soon"),
        ("MAX_CONCURRENT_READS", "0"),
        ("SQLITE_SYNCHRONOUS", "SOMETIMES"),
        ("SQLITE_BUSY_TIMEOUT_MS", "-5"),
        ("ECHO_SQL", "perhaps"),
        ("DATABASE_URL", "mysql://user@localhost/app"),
        ("DATABASE_URL", "not a url"),
    ],
)
def test_an_invalid_environment_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert name in str(raised.value)


@pytest.mark.parametrize(
    ("filename", "text", "name"),
    [
        ("config.yml", "DB_POOL_SIZE: many\n", "DB_POOL_SIZE"),
        (".env", "SQLITE_SYNCHRONOUS=SOMETIMES\n", "SQLITE_SYNCHRONOUS"),
    ],
)
def test_an_invalid_file_value_names_the_setting(
    clean_directory: Path, filename: str, text: str, name: str
) -> None:
    write(clean_directory / filename, text)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert name in str(raised.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./app.db", "sqlite+aiosqlite:///./app.db"),
        ("sqlite+pysqlite:////var/lib/app.db", "sqlite+aiosqlite:////var/lib/app.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_async_url_is_derived_from_database_url(url: str, expected: str) -> None:
    assert async_url(Settings(DATABASE_URL=url)) == expected


def test_async_database_url_overrides_the_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@primary/db")
    monkeypatch.setenv("ASYNC_DATABASE_URL", "postgresql+asyncpg://u@pooler/db")
    assert async_url(Settings()) == "postgresql+asyncpg://u@pooler/db"


@pytest.mark.parametrize(
    ("name", "value"), [("DB_POOL_SIZE", "abc"), ("DATABASE_URL", "mysql://u@h/db")]
)
def test_cli_reports_an_invalid_setting_and_exits_2(
    clean_directory: Path, name: str, value: str
) -> None:
    result = run_app("init-db", env={name: value}, cwd=clean_directory, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(clean_directory.iterdir())
