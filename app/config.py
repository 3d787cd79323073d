"""Settings: field defaults < config.yml < .env < environment variables."""

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from app.db import urls
from app.outbox.config import CommaSeparated, OutboxSettings

__all__ = ["Settings", "async_url", "check_secret_key", "settings"]

SECRET_KEY_MIN_LENGTH = 32
_PLACEHOLDERS = ("changethis", "changeme", "secret", "password", "example", "your", "insecure")


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _none(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() in ("none", "null") else value


class Settings(OutboxSettings, BaseSettings):
    """Every knob of the service; names are the environment variables that set them."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        yaml_file="config.yml",
        extra="ignore",
        validate_default=True,
        # Errors name the setting but never echo its value: it may be a secret.
        hide_input_in_errors=True,
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
        description="reads running at once per worker process; default: 2 on SQLite (its "
        "reads are CPU work in this process, so more threads only fight over the GIL), 4 on "
        "a server (enough overlapping round trips to keep the process busy); never more "
        "than DB_POOL_SIZE + DB_MAX_OVERFLOW or THREADPOOL_SIZE",
    )
    MAX_CONCURRENT_WRITES: PositiveInt | None = Field(
        default=None,
        description="write transactions running at once per worker process; default: 1 on "
        "SQLite (one writer at a time: the others queue in the process, first come first "
        "served, instead of polling SQLite's lock), 4 on a server",
    )
    MAX_CONCURRENT_REQUESTS: PositiveInt = Field(
        default=256, description="per worker process; past it a request gets a 503 at once"
    )

    SQLITE_READ_ON_LOOP_MS: float = Field(
        default=2.0,
        ge=0,
        description="SQLite reads run on the event loop, without a thread hop, while SQLite "
        "works on them for less than this; a longer read is interrupted and run again in a "
        "worker thread. 0: every read in a worker thread",
    )
    SQLITE_WRITE_BATCH: PositiveInt = Field(
        default=32,
        description="SQLite: writes that queue while a transaction runs share the next one "
        "(group commit: one BEGIN and COMMIT for them all), at most this many; 1: each "
        "write its own transaction",
    )
    SQLITE_BUSY_TIMEOUT_MS: PositiveInt = 5000
    SQLITE_SYNCHRONOUS: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"

    AUTH_ENABLED: bool = Field(
        default=False,
        description="OAuth2 login (POST /token), bearer tokens and owner-only writes; off: "
        "the tutorial's open contract",
    )
    SECRET_KEY: SecretStr | None = Field(
        default=None, description="signs the access tokens (HS256); required with AUTH_ENABLED"
    )
    ACCESS_TOKEN_EXPIRE_MINUTES: PositiveInt = Field(
        default=15, description="lifetime of an access token; a refresh token renews it"
    )
    REFRESH_TOKEN_EXPIRE_DAYS: PositiveInt = Field(
        default=30,
        description="a refresh token expires this long after it was issued; each refresh "
        "issues a new one (a session unused this long ends)",
    )

    # Hostile input and hostile clients (docs/security.md).
    MAX_BODY_BYTES: PositiveInt = Field(
        default=1024 * 1024,
        description="largest request body; a larger one gets 413 before the rest is read",
    )
    CORS_ORIGINS: CommaSeparated = Field(
        default=[],
        description="comma-separated origins (https://app.example.com) whose pages may call "
        "the API from a browser; empty: no CORS headers at all",
    )
    LOGIN_MAX_FAILURES: PositiveInt = Field(
        default=5,
        description="failed logins for one e-mail before POST /token answers 429 for it",
    )
    LOGIN_FAILURE_WINDOW_SECONDS: PositiveInt = Field(
        default=900, description="from an e-mail's first failed login, how long they count"
    )
    LOGIN_MAX_ATTEMPTS_PER_MINUTE: PositiveInt = Field(
        default=30, description="logins one client address may try per minute"
    )
    IDEMPOTENCY_KEY_TTL_HOURS: PositiveFloat = Field(
        default=24.0,
        description="how long a POST or PATCH's Idempotency-Key and its stored response are "
        "kept: a retry within this replays the response, after it the key is new again",
    )

    @field_validator("CORS_ORIGINS")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            _check_origin(origin)
        return origins

    # Operations: logs, metrics, shutdown, proxies, PgBouncer (docs/operations.md).
    LOG_LEVEL: Annotated[
        Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lower)
    ] = "info"
    LOG_FORMAT: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = Field(
        default="text", description="json: one object per line"
    )
    ACCESS_LOG: bool = Field(default=True, description="one app.access line per request")
    METRICS_ENABLED: bool = Field(default=False, description="serve GET /metrics (Prometheus)")
    PORT: int = Field(
        default=8000, ge=1, le=65535, description="the port `app serve` listens on; --port"
    )
    METRICS_TOKEN: SecretStr | None = Field(
        default=None,
        description="/metrics then needs `Authorization: Bearer <METRICS_TOKEN>`; unset with "
        "auth on: /metrics is not served",
    )
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

    # Read replicas (docs/postgresql.md).
    DATABASE_REPLICA_URLS: CommaSeparated = Field(
        default=[],
        description="comma-separated postgresql:// URLs of streaming replicas of DATABASE_URL; "
        "reads run there, writes on DATABASE_URL; empty: every read on DATABASE_URL",
    )
    DB_REPLICA_MAX_LAG_SECONDS: PositiveFloat = Field(
        default=5.0,
        description="a replica further behind than this serves no reads until it catches up",
    )
    DB_REPLICA_CHECK_SECONDS: PositiveFloat = Field(
        default=1.0, description="how often each replica's state and lag are checked"
    )

    @field_validator("DATABASE_REPLICA_URLS")
    @classmethod
    def _check_replica_urls(cls, urls: list[str]) -> list[str]:
        for n, url in enumerate(urls, 1):
            scheme = url.partition("://")[0]
            if scheme not in _REPLICA_SCHEMES:
                # Never the URL itself: it holds a password.
                raise ValueError(
                    f"entry {n} must be a postgresql:// (or postgresql+psycopg://) URL, got "
                    f"scheme {scheme!r}"
                )
        return urls

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        # Fail at start, naming the setting, rather than at the first query or login.
        async_url(self)
        if self.DATABASE_REPLICA_URLS and self.DATABASE_URL.partition("://")[0] not in (
            _REPLICA_SCHEMES
        ):
            raise ValueError(
                "DATABASE_REPLICA_URLS needs a PostgreSQL DATABASE_URL: replicas are "
                "PostgreSQL streaming standbys of it (SQLite has none); unset it"
            )
        if self.AUTH_ENABLED:
            check_secret_key(self.SECRET_KEY)
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


def check_secret_key(key: SecretStr | None) -> None:
    """Refuse a missing, short or placeholder SECRET_KEY, without ever showing its value."""
    value = key.get_secret_value() if key is not None else ""
    how = "set it to a random value: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if not value:
        raise ValueError(f"SECRET_KEY is required when AUTH_ENABLED is true: {how}")
    if len(value) < SECRET_KEY_MIN_LENGTH:
        raise ValueError(
            f"SECRET_KEY is too short ({len(value)} characters, at least "
            f"{SECRET_KEY_MIN_LENGTH}): {how}"
        )
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDERS) or len(set(value)) < 8:
        raise ValueError(f"SECRET_KEY looks like a placeholder, not a random value: {how}")


_REPLICA_SCHEMES = ("postgresql", "postgresql+psycopg")

_ORIGIN = re.compile(r"https?://[^/\s]+")


def _check_origin(origin: str) -> None:
    """An origin is what a browser sends in ``Origin``: scheme, host and port, no path (a
    trailing slash would never match), or ``*`` for any."""
    if origin != "*" and not _ORIGIN.fullmatch(origin):
        raise ValueError(
            f"{origin!r} is not an origin such as https://app.example.com (scheme, host and "
            "optional port; no path, no trailing slash), nor *"
        )


def async_url(settings: Settings) -> str:
    """The async engine's URL: ASYNC_DATABASE_URL, or DATABASE_URL with its async driver."""
    return urls.async_url(settings.DATABASE_URL, settings.ASYNC_DATABASE_URL)


settings = Settings()
