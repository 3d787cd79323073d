"""The operations settings (logs, metrics, shutdown, proxies, PgBouncer): parsing, defaults,
and DB_PREPARE_THRESHOLD reaching psycopg on both engines."""

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, event

from app.config import Settings
from app.db.engines import build_async_engine, build_engine

PG_URL = "postgresql://app:pw@127.0.0.1:1/app"


@pytest.fixture(autouse=True)
def clean_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (no config.yml, no .env) and no setting in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_defaults() -> None:
    s = Settings()
    assert (s.LOG_LEVEL, s.LOG_FORMAT, s.ACCESS_LOG) == ("info", "text", True)
    assert s.METRICS_ENABLED is False
    assert s.TIMEOUT_GRACEFUL_SHUTDOWN == 20
    assert (s.PROXY_HEADERS, s.FORWARDED_ALLOW_IPS) == (True, "127.0.0.1")
    assert s.DB_PREPARE_THRESHOLD == 5  # psycopg's own default


@pytest.mark.parametrize(
    ("raw", "parsed"), [("none", None), ("None", None), ("NULL", None), ("0", 0), ("12", 12)]
)
def test_the_prepare_threshold_is_an_int_or_none(
    monkeypatch: pytest.MonkeyPatch, raw: str, parsed: int | None
) -> None:
    monkeypatch.setenv("DB_PREPARE_THRESHOLD", raw)
    threshold = Settings().DB_PREPARE_THRESHOLD
    assert threshold == parsed


def test_none_from_config_yml(clean_directory: Path) -> None:
    (clean_directory / "config.yml").write_text("DB_PREPARE_THRESHOLD: null\nLOG_FORMAT: JSON\n")
    s = Settings()
    assert (s.DB_PREPARE_THRESHOLD, s.LOG_FORMAT) == (None, "json")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DB_PREPARE_THRESHOLD", "-1"),
        ("DB_PREPARE_THRESHOLD", "never"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("TIMEOUT_GRACEFUL_SHUTDOWN", "0"),
    ],
)
def test_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValidationError, match=name):
        Settings()


class _ConnectAttemptError(Exception):
    """Raised instead of connecting: the arguments were recorded."""


def _connect_args(engine: Engine) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def record(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise _ConnectAttemptError

    with pytest.raises(_ConnectAttemptError):
        engine.connect()
    return seen


@pytest.mark.parametrize("threshold", [None, 0, 5])
async def test_the_prepare_threshold_reaches_psycopg_on_both_engines(
    threshold: int | None,
) -> None:
    s = Settings(DATABASE_URL=PG_URL, DB_PREPARE_THRESHOLD=threshold)
    engine, async_engine = build_engine(s), build_async_engine(s)
    try:
        for built in (engine, async_engine.sync_engine):
            args = _connect_args(built)
            assert args["prepare_threshold"] == threshold
            assert args["connect_timeout"] == 5
    finally:
        await async_engine.dispose()
        engine.dispose()


def test_sqlite_gets_no_prepare_threshold() -> None:
    engine = build_engine(Settings(DATABASE_URL="sqlite://", DB_PREPARE_THRESHOLD=None))
    try:
        assert "prepare_threshold" not in _connect_args(engine)
    finally:
        engine.dispose()


def test_sql_parameters_never_reach_logs_or_errors() -> None:
    engine = build_engine(Settings(DATABASE_URL="sqlite://"))
    try:
        assert engine.hide_parameters is True
    finally:
        engine.dispose()
