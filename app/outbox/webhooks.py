"""The built-in handler: every event POSTed to each of WEBHOOK_URLS, as Standard Webhooks
specifies (https://www.standardwebhooks.com): ``webhook-id`` (the event's id),
``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``id.timestamp.body``, signed by the ``standardwebhooks`` package).

A 2xx answer is a delivery; any other status (a redirect too: none is followed), a connection
error or a timeout (WEBHOOK_CONNECT_TIMEOUT_SECONDS to connect, WEBHOOK_TIMEOUT_SECONDS in all)
fails the attempt. Each URL is a handler of its own, named by a digest of the URL: a retry
posts only to the URLs that have not answered 2xx yet.
"""

import hashlib
import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit

import anyio
import httpx2
from pydantic import SecretStr
from standardwebhooks import Webhook

from app.outbox.handlers import Event, Handler, Registry

__all__ = ["DeliveryError", "Webhooks", "destination_name"]

log = logging.getLogger("app.outbox")


class DeliveryError(Exception):
    """The receiver did not accept the event."""


def destination_name(url: str) -> str:
    """The handler name of a URL: no secret it may hold shows in the table or the logs."""
    return "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]


class Webhooks:
    def __init__(
        self,
        urls: list[str],
        secret: SecretStr,
        *,
        connect_timeout: float,
        timeout: float,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.urls = urls
        self.timeout = timeout
        self._signer = Webhook(secret.get_secret_value())
        self._client = httpx2.AsyncClient(
            follow_redirects=False,
            timeout=httpx2.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    def register(self, registry: Registry) -> None:
        for url in self.urls:
            registry.add("*", self._sender(url), name=destination_name(url))

    def _sender(self, url: str) -> Handler:
        async def send(event: Event) -> None:
            await self.send(url, event)

        return send

    def headers(self, event: Event, now: datetime | None = None) -> dict[str, str]:
        moment = now or datetime.now(UTC)
        return {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": self._signer.sign(event.id, moment, event.body),
        }

    async def send(self, url: str, event: Event) -> None:
        content = event.body.encode()
        try:
            with anyio.fail_after(self.timeout):
                response = await self._client.post(
                    url, content=content, headers=self.headers(event)
                )
        except TimeoutError:
            raise DeliveryError(f"{_host(url)}: no answer within {self.timeout:g}s") from None
        except httpx2.HTTPError as error:
            raise DeliveryError(f"{_host(url)}: {type(error).__name__}: {error}") from None
        if not 200 <= response.status_code < 300:
            redirect = " (redirects are not followed)" if response.is_redirect else ""
            raise DeliveryError(f"{_host(url)}: HTTP {response.status_code}{redirect}")

    async def aclose(self) -> None:
        await self._client.aclose()


def _host(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]
