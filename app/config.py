"""Settings: field defaults < config.yml < .env < environment variables."""

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

__all__ = ["Settings", "async_url", "settings"]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _none(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() in ("none", "null") else value


class Settings(BaseSettings):
    """Every knob of the service; names are the environment variables that set them."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        yaml_file="config.yml",
        extra="ignore",
        validate_default=True,
    )

    DATABASE_URL: str = "sqlite:///./app.db"
    ASYNC_DATABASE_URL: str | None = None
    ECHO_SQL: bool = False
    CREATE_SCHEMA: bool | None = Field(
        default=None, description="create missing tables at startup; default: on for SQLite"
    )
    MIGRATE_ON_STARTUP: bool = Field(
        default=False, description="run `app db upgrade head` at startup instead of CREATE_SCHEMA"
    )

    DB_POOL_SIZE: PositiveInt = 5
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0)
    DB_POOL_PRE_PING: bool = True
    DB_POOL_RECYCLE: int = Field(default=1800, description="seconds; -1 disables")
    DB_QUEUE_TIMEOUT: PositiveFloat = Field(
        default=5.0, description="longest wait for a database connection before a 503"
    )
    THREADPOOL_SIZE: PositiveInt = 40
    MAX_CONCURRENT_READS: PositiveInt | None = Field(
        default=None,
        description="reads running at once per worker process, each in a thread on a sync "
        "connection; default: 2 on SQLite (its reads are CPU work in this process, so more "
        "threads only fight over the GIL), else DB_POOL_SIZE + DB_MAX_OVERFLOW",
    )
    MAX_CONCURRENT_WRITES: PositiveInt | None = Field(
        default=None,
        description="write transactions running at once per worker process; default: 1 on "
        "SQLite (one writer at a time: the others queue in the process, first come first "
        "served, instead of polling SQLite's lock), else DB_POOL_SIZE + DB_MAX_OVERFLOW",
    )
    MAX_CONCURRENT_REQUESTS: PositiveInt = Field(
        default=256, description="per worker process; past it a request gets a 503 at once"
    )

    SQLITE_BUSY_TIMEOUT_MS: PositiveInt = 5000
    SQLITE_SYNCHRONOUS: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"

    # Operations: logs, metrics, shutdown, proxies, PgBouncer (docs/operations.md).
    LOG_LEVEL: Annotated[
        Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lower)
    ] = "info"
    LOG_FORMAT: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = Field(
        default="text", description="json: one object per line"
    )
    ACCESS_LOG: bool = Field(default=True, description="one app.access line per request")
    METRICS_ENABLED: bool = Field(default=False, description="serve GET /metrics (Prometheus)")
    TIMEOUT_GRACEFUL_SHUTDOWN: PositiveInt = Field(
        default=20, description="seconds the requests in flight get to finish after SIGTERM"
    )
    PROXY_HEADERS: bool = Field(
        default=True,
        description="take the client address from X-Forwarded-For / X-Forwarded-Proto sent "
        "by a proxy in FORWARDED_ALLOW_IPS",
    )
    FORWARDED_ALLOW_IPS: str = Field(
        default="127.0.0.1", description="comma-separated addresses or networks, or *"
    )
    DB_PREPARE_THRESHOLD: Annotated[NonNegativeInt | None, BeforeValidator(_none)] = Field(
        default=5,
        description="psycopg's prepare_threshold (its default, 5); none disables server-side "
        "prepared statements, as PgBouncer's transaction pooling needs before 1.22",
    )

    @model_validator(mode="after")
    def _check_url(self) -> "Settings":
        async_url(self)  # fail at start, naming the setting, rather than at first query
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            YamlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )


_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg_async",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def async_url(settings: Settings) -> str:
    """The async engine's URL: ASYNC_DATABASE_URL, or DATABASE_URL with its async driver."""
    if settings.ASYNC_DATABASE_URL:
        return settings.ASYNC_DATABASE_URL
    scheme, sep, rest = settings.DATABASE_URL.partition("://")
    if not sep or scheme not in _ASYNC_DRIVERS:
        raise ValueError(
            f"DATABASE_URL must start with one of {', '.join(sorted(_ASYNC_DRIVERS))}:// "
            f"(or set ASYNC_DATABASE_URL), got scheme {scheme!r}"
        )
    return f"{_ASYNC_DRIVERS[scheme]}://{rest}"


settings = Settings()
