"""A small, bounded HTTP/1.1 load client for the real-server tests; it only talks to 127.0.0.1.

Each ``Connection`` is one keep-alive socket used by one virtual client, like ``wrk``'s
connections, so "128 connections" means 128 requests in flight at once.
"""

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = [
    "Connection",
    "LoadResult",
    "ProtocolError",
    "Request",
    "Response",
    "register_at_once",
    "run_load",
]

_KEEP_ALIVE_SECONDS = 2.0
"""Below uvicorn's 5 s keep-alive timeout."""

Request = tuple[str, str, Any]
"""(method, path, JSON body or None)"""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class ProtocolError(Exception):
    """The server's answer is not an HTTP/1.1 response this client understands."""


class Connection:
    """One keep-alive connection to a local server; it reconnects after a close or error."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"load goes to 127.0.0.1:<port> only, got {url!r}")
        self._host, self._port = parts.hostname, parts.port
        self.timeout = timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._idle_since = 0.0

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        start = time.perf_counter()
        if start - self._idle_since > _KEEP_ALIVE_SECONDS:
            self.close()  # the server may be closing it right now: never reuse a stale socket
        try:
            async with asyncio.timeout(self.timeout):
                if self._streams is None:
                    self._streams = await asyncio.open_connection(self._host, self._port)
                reader, writer = self._streams
                writer.write(self._encode(method, path, body, headers or {}))
                await writer.drain()
                status, headers, content = await _read_response(reader)
        except BaseException:
            self.close()
            raise
        self._idle_since = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, content, self._idle_since - start)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    def _encode(self, method: str, path: str, body: Any, headers: dict[str, str]) -> bytes:
        content = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(content)}\r\n\r\n"
        return head.encode("latin-1") + content


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head[:-4].split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ProtocolError(status_line)
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ProtocolError(f"no Content-Length in {status_line!r}")
    content = await reader.readexactly(int(headers["content-length"]))
    return int(rest.split(" ", 1)[0]), headers, content


@dataclass
class LoadResult:
    """What ``run_load`` saw: statuses, client-side errors by kind, and latencies."""

    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)
    rejected: list[Response] = field(default_factory=list)
    """Responses with a status of 400 or more, kept for their headers and bodies."""

    @property
    def throughput(self) -> float:
        """Successful responses per second."""
        ok = sum(n for status, n in self.statuses.items() if status < 400)
        return ok / self.seconds

    def percentile(self, p: float, status: int = 200) -> float:
        values = sorted(self.latencies.get(status, []))
        return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0.0

    def summary(self) -> str:
        return (
            f"{self.throughput:.0f} req/s over {self.seconds:.1f}s, statuses "
            f"{dict(self.statuses)}, errors {dict(self.errors)}, p50 "
            f"{self.percentile(50) * 1000:.0f} ms, p99 {self.percentile(99) * 1000:.0f} ms"
        )


async def run_load(
    url: str,
    *,
    connections: int,
    seconds: float,
    request: Callable[[int], Request],
    request_timeout: float = 10.0,
) -> LoadResult:
    """``connections`` clients send ``request(i)`` back to back until ``seconds`` have passed.

    A client honours the Retry-After of a 503; a request unanswered after
    ``request_timeout`` seconds counts as an error named "timeout".
    """
    result = LoadResult(seconds=seconds)
    start = time.perf_counter()
    deadline = start + seconds
    counter = itertools.count()

    async def client() -> None:
        with Connection(url, timeout=request_timeout) as connection:
            while time.perf_counter() < deadline:
                method, path, body = request(next(counter))
                try:
                    response = await connection.request(method, path, body)
                except TimeoutError:
                    result.errors["timeout"] += 1
                    continue
                except (OSError, asyncio.IncompleteReadError, ProtocolError) as error:
                    result.errors[type(error).__name__] += 1
                    continue
                result.statuses[response.status] += 1
                result.latencies.setdefault(response.status, []).append(response.seconds)
                if response.status >= 400:
                    result.rejected.append(response)
                if response.status == 503 and "retry-after" in response.headers:
                    # A well-behaved client backs off as told instead of hammering.
                    pause = float(response.headers["retry-after"])
                    await asyncio.sleep(min(pause, max(deadline - time.perf_counter(), 0)))

    await asyncio.gather(*(client() for _ in range(connections)))
    result.seconds = max(time.perf_counter() - start, 1e-9)
    return result


async def register_at_once(connections: Sequence[Connection], email: str) -> list[Response]:
    """Every connection registers ``email`` at the same moment: a race for one account.

    The connections are opened first (``GET /health``), so the racing requests leave together.
    """
    await asyncio.gather(*(c.request("GET", "/health") for c in connections))
    body = {"email": email, "password": "pw"}
    return list(await asyncio.gather(*(c.request("POST", "/users/", body) for c in connections)))
