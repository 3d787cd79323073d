"""Issue 8: one worker under 16, 128 and 1000 connections: no collapse, no hang, fast 503s.

The classic sync-endpoint + yield-session app serves nothing at 64+ connections once its
thread pool and connection pool wait on each other (FastAPI issue 3205). Here throughput at
128 connections must stay within 0.7x of the 16-connection figure, with every request
answered; far past capacity the answer is a quick 503 with Retry-After, and the service is
back to normal the moment the burst ends.
"""

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import Engine

from app.testing.server import LiveServer
from tests.load import Connection, LoadResult, Request, run_load

pytestmark = [pytest.mark.slow, pytest.mark.pgbouncer]

ROUND_SECONDS = 1.5
ROUNDS = 2  # alternate 16 and 128 connections; compare the best of each (others share the CPU)
MAX_ROUNDS = 6  # a busy machine gets more rounds to show the best of each
MIN_RATIO = 0.7
CLIENT_TIMEOUT = 20.0
REQUEST_LIMIT = 64
BURST_CONNECTIONS = 1000
BURST_SECONDS = 3.0
FAST_503_SECONDS = 3.0  # vs DB_QUEUE_TIMEOUT = 5 s; generous for a saturated 2-core machine
RECOVERED_SECONDS = 1.0
NEW_CONNECTIONS = 64

Requests = Callable[[int], Request]


async def _one(url: str, method: str, path: str, body: object = None) -> tuple[int, float]:
    with Connection(url, timeout=CLIENT_TIMEOUT) as connection:
        response = await connection.request(method, path, body)
        return response.status, response.seconds


@pytest.fixture
async def server(database_url: str, schema: Engine) -> AsyncIterator[tuple[LiveServer, int]]:
    """One worker with the default settings, and the id of a user in its database."""
    schema.dispose()
    env = {"DATABASE_URL": database_url}
    with LiveServer(env, workers=1, extra_args=("--no-access-log",)) as live:
        with Connection(live.url, timeout=CLIENT_TIMEOUT) as connection:
            body = {"email": "load@example.com", "password": "pw"}
            response = await connection.request("POST", "/users/", body)
        assert response.status == 200
        yield live, response.json()["id"]


def _reads(user_id: int) -> Requests:
    return lambda i: ("GET", f"/users/{user_id}", None)


def _writes(user_id: int) -> Requests:
    return lambda i: ("POST", f"/users/{user_id}/items/", {"title": f"load {i}"})


@pytest.mark.parametrize("requests", [_reads, _writes], ids=["get-user", "post-item"])
async def test_throughput_holds_from_16_to_128_connections(
    server: tuple[LiveServer, int], requests: Callable[[int], Requests]
) -> None:
    live, user_id = server
    request = requests(user_id)
    await run_load(live.url, connections=16, seconds=0.5, request=request)  # warm up
    results: dict[int, list[LoadResult]] = {16: [], 128: []}
    for _ in range(MAX_ROUNDS):
        if len(results[16]) >= ROUNDS and _holds(results):
            break  # other load on the machine can spoil a round: more rounds, not a retry
        for connections, runs in results.items():
            result = await run_load(
                live.url,
                connections=connections,
                seconds=ROUND_SECONDS,
                request=request,
                request_timeout=CLIENT_TIMEOUT,
            )
            print(f"\n{connections:4} connections: {result.summary()}")
            assert result.errors == {}, result.summary()
            assert set(result.statuses) == {200}, result.summary()
            runs.append(result)
    status, seconds = await _one(live.url, *request(0))
    assert status == 200
    assert seconds < RECOVERED_SECONDS

    best = {n: max(r.throughput for r in runs) for n, runs in results.items()}
    assert _holds(results), best


def _holds(results: dict[int, list[LoadResult]]) -> bool:
    """Throughput at 128 connections within MIN_RATIO of 16, best round against best round."""
    best = {n: max(r.throughput for r in runs) for n, runs in results.items()}
    return best[128] >= MIN_RATIO * best[16]


async def test_a_burst_far_past_the_limit_ends_in_200s_or_fast_503s(
    database_url: str, schema: Engine
) -> None:
    schema.dispose()
    env = {"DATABASE_URL": database_url, "MAX_CONCURRENT_REQUESTS": str(REQUEST_LIMIT)}
    with LiveServer(env, workers=1, extra_args=("--no-access-log",)) as live:
        body = {"email": "burst@example.com", "password": "pw"}
        status, _ = await _one(live.url, "POST", "/users/", body)
        assert status == 200
        reads, writes = _reads(1), _writes(1)
        result = await run_load(
            live.url,
            connections=BURST_CONNECTIONS,
            seconds=BURST_SECONDS,
            request=lambda i: reads(i) if i % 2 else writes(i),
            request_timeout=CLIENT_TIMEOUT,
        )
        print(
            f"\n{BURST_CONNECTIONS} connections: {result.summary()}, 503 p50 "
            f"{result.percentile(50, 503) * 1000:.0f} ms p99 "
            f"{result.percentile(99, 503) * 1000:.0f} ms"
        )

        after = time.perf_counter()
        answers = [await _one(live.url, "GET", "/users/1") for _ in range(10)]
        recovered = time.perf_counter() - after

    assert result.errors == {}, result.summary()
    assert set(result.statuses) == {200, 503}, result.summary()
    assert {r.headers.get("retry-after") for r in result.rejected} == {"1"}
    slow = sorted(r.seconds for r in result.rejected if r.seconds >= FAST_503_SECONDS)
    assert slow == [], f"{len(slow)} slow 503s, the slowest after {slow[-1]:.1f}s"
    assert [status for status, _ in answers] == [200] * 10
    assert max(seconds for _, seconds in answers) < RECOVERED_SECONDS, recovered


async def test_one_thread_and_one_connection_still_serve_128_connections(
    database_url: str, schema: Engine
) -> None:
    """The smallest pools that exist: nothing can wait on anything that waits on it."""
    schema.dispose()
    env = {
        "DATABASE_URL": database_url,
        "THREADPOOL_SIZE": "1",
        "DB_POOL_SIZE": "1",
        "DB_MAX_OVERFLOW": "0",
    }
    with LiveServer(env, workers=1, extra_args=("--no-access-log",)) as live:
        body = {"email": "tiny@example.com", "password": "pw"}
        status, _ = await _one(live.url, "POST", "/users/", body)
        assert status == 200
        mix: list[Request] = [
            ("GET", "/users/1", None),
            ("POST", "/users/1/items/", {"title": "tiny"}),
            ("GET", "/items/?limit=10", None),
            ("GET", "/health", None),
        ]
        result = await run_load(
            live.url,
            connections=128,
            seconds=ROUND_SECONDS,
            request=lambda i: mix[i % len(mix)],
            request_timeout=CLIENT_TIMEOUT,
        )
        print(f"\n128 connections, 1 thread, 1 connection: {result.summary()}")
        status, seconds = await _one(live.url, "GET", "/users/1")
    assert result.errors == {}, result.summary()
    assert set(result.statuses) == {200}, result.summary()
    assert status == 200
    assert seconds < RECOVERED_SECONDS


async def _status(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; its status."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    length = next(
        int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return int(lines[0].split(" ")[1])


@pytest.mark.any_backend  # its request needs no database
async def test_app_serve_takes_a_burst_of_new_connections_in_at_once(
    database_url: str, schema: Engine
) -> None:
    """The tail at 128 connections (issue 24): an event loop that accepts one connection per
    turn (uvloop, since libuv PR 3696) leaves a burst of new connections in the listen
    backlog for as many turns, each as long as the requests already in: the first
    connections are served over and over while the last wait seconds for their first
    answer. `app serve` takes them all in at once: before the last of 64 connections has its
    first answer, none has had more than two (the first answers may span two turns of the
    loop), where `app serve --loop uvloop` gave the first ones 41-63. The burst is made
    certain by stopping the server while the clients connect. The request needs no database
    (how the loop accepts does not depend on the route), so the gate does not order the
    answers."""
    schema.dispose()
    with LiveServer({"DATABASE_URL": database_url}, serve=True) as live:
        request = f"GET /health/live HTTP/1.1\r\nHost: {live.host}\r\n\r\n".encode()
        os.kill(live.pid, signal.SIGSTOP)  # the kernel still completes the handshakes
        try:
            streams = [
                await asyncio.open_connection(live.host, live.port) for _ in range(NEW_CONNECTIONS)
            ]
            for _, writer in streams:
                writer.write(request)
                await writer.drain()
        finally:
            os.kill(live.pid, signal.SIGCONT)
        answers: list[int] = []
        first: set[int] = set()
        everyone = asyncio.Event()
        cut = 0

        async def client(
            n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            nonlocal cut
            while not everyone.is_set():
                assert await _status(reader) == 200
                answers.append(n)
                first.add(n)
                if len(first) == NEW_CONNECTIONS:
                    cut = len(answers)
                    everyone.set()
                else:
                    writer.write(request)
            writer.close()

        async with asyncio.timeout(CLIENT_TIMEOUT):
            await asyncio.gather(*(client(n, *pair) for n, pair in enumerate(streams)))
    most = max(Counter(answers[:cut]).values())
    assert most <= 2, Counter(answers[:cut]).most_common(3)
