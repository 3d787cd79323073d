"""The settings of the outbox, its worker and webhooks (docs/outbox.md): a part of
``app.config.Settings``, kept here with their checks. A leaf: it imports no other app module."""

import base64
import binascii
import re
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode

__all__ = ["CommaSeparated", "OutboxSettings", "check_webhook_secret"]


def _comma_separated(value: Any) -> Any:
    """``"https://a.example, https://b.example"`` -> the two; ``""`` -> none."""
    if not isinstance(value, str):
        return value
    return [part.strip() for part in value.split(",") if part.strip()]


CommaSeparated = Annotated[list[str], NoDecode, BeforeValidator(_comma_separated)]
"""A list setting written as one comma-separated string (pydantic-settings would want JSON)."""
_WEBHOOK_URL = re.compile(r"https?://[^/\s?#]+(/\S*)?")


class OutboxSettings(BaseSettings):
    """The outbox's knobs; ``Settings`` inherits them (and its sources, its config)."""

    OUTBOX_ENABLED: bool = Field(
        default=True, description="every change of a resource writes its event (the outbox)"
    )
    OUTBOX_POLL_SECONDS: PositiveFloat = Field(
        default=1.0, description="how long an idle `app worker` waits before looking again"
    )
    OUTBOX_BATCH_SIZE: PositiveInt = Field(
        default=20, description="events one worker claims at once and delivers concurrently"
    )
    OUTBOX_LEASE_SECONDS: PositiveFloat = Field(
        default=60.0,
        description="a claimed event is another worker's to deliver after this (a crashed "
        "worker's events are delivered again); longer than WEBHOOK_TIMEOUT_SECONDS",
    )
    OUTBOX_MAX_ATTEMPTS: PositiveInt = Field(
        default=10, description="failed attempts after which an event is parked as dead"
    )
    OUTBOX_BACKOFF_SECONDS: PositiveFloat = Field(
        default=2.0, description="delay before the first retry; each retry doubles it"
    )
    OUTBOX_BACKOFF_MAX_SECONDS: PositiveFloat = Field(
        default=3600.0, description="the longest delay between two attempts"
    )
    OUTBOX_RETENTION_HOURS: NonNegativeFloat = Field(
        default=168.0, description="delivered events are deleted this long after they were made"
    )
    OUTBOX_METRICS_PORT: int | None = Field(
        default=None, ge=1, le=65535, description="`app worker` serves /metrics on this port"
    )
    WEBHOOK_URLS: CommaSeparated = Field(
        default=[],
        description="comma-separated http(s) URLs every event is POSTed to (Standard Webhooks)",
    )
    WEBHOOK_SECRET: SecretStr | None = Field(
        default=None,
        description="whsec_ + base64 of 24 to 64 random bytes: signs the webhooks; required "
        "with WEBHOOK_URLS",
    )
    WEBHOOK_CONNECT_TIMEOUT_SECONDS: PositiveFloat = Field(
        default=3.0, description="longest wait for a webhook receiver's connection"
    )
    WEBHOOK_TIMEOUT_SECONDS: PositiveFloat = Field(
        default=10.0, description="longest a webhook request may take in all; then it is retried"
    )

    @field_validator("WEBHOOK_URLS")
    @classmethod
    def _check_webhook_urls(cls, urls: list[str]) -> list[str]:
        for n, url in enumerate(urls, 1):
            if not _WEBHOOK_URL.fullmatch(url):
                # Never the URL itself: it may carry a token.
                raise ValueError(f"entry {n} must be an http:// or https:// URL with a host")
        return urls

    @model_validator(mode="after")
    def _check_outbox(self) -> "OutboxSettings":
        if self.WEBHOOK_SECRET is not None and not self.WEBHOOK_SECRET.get_secret_value():
            self.WEBHOOK_SECRET = None  # set but empty (WEBHOOK_SECRET= in a .env): unset
        if self.WEBHOOK_URLS or self.WEBHOOK_SECRET is not None:
            check_webhook_secret(self.WEBHOOK_SECRET)
        if self.OUTBOX_LEASE_SECONDS <= self.WEBHOOK_TIMEOUT_SECONDS:
            raise ValueError(
                "OUTBOX_LEASE_SECONDS must be longer than WEBHOOK_TIMEOUT_SECONDS: a delivery "
                "still running when its lease ends would be made again by another worker"
            )
        return self


def check_webhook_secret(secret: SecretStr | None) -> None:
    """Standard Webhooks' secret format, ``whsec_`` + base64 of 24 to 64 bytes; the error
    never shows the value."""
    value = secret.get_secret_value() if secret is not None else ""
    how = (
        "python -c 'import base64, os; "
        'print("whsec_" + base64.b64encode(os.urandom(32)).decode())\''
    )
    if not value:
        raise ValueError(f"WEBHOOK_SECRET is required with WEBHOOK_URLS: make one with {how}")
    body = value.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True) if value.startswith("whsec_") else b""
    except binascii.Error:
        key = b""
    if not 24 <= len(key) <= 64:
        raise ValueError(
            f"WEBHOOK_SECRET must be whsec_ followed by the base64 of 24 to 64 random bytes: "
            f"make one with {how}"
        )
