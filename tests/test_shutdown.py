"""SIGTERM with 20 writes in flight on ``app serve`` (2 workers, and 1): readiness fails, new
connections are refused (or answered 503 by a worker still draining), every write finishes
with 200 and is in the database, each worker disposes of its engines after its last one, and
the process exits 0 within the graceful timeout."""

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from app.testing.server import LiveServer
from tests.load import Connection, ProtocolError, Response

pytestmark = pytest.mark.slow

IN_FLIGHT = 20
GRACE_SECONDS = 30
REQUEST_TIMEOUT = GRACE_SECONDS + 30.0
DEADLINE_SECONDS = 60.0


@contextmanager
def writes_blocked(engine: Engine, user_id: int) -> Iterator[None]:
    """Until the block ends, new items of ``user_id`` wait in the database: behind SQLite's
    write lock, or on PostgreSQL behind a row lock that the foreign-key check waits for."""
    with engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        yield


async def in_progress(url: str) -> float:
    """Requests in progress over every worker, not counting the scrape itself."""
    with Connection(url, timeout=10) as connection:
        response = await connection.request("GET", "/metrics")
    assert response.status == 200
    for family in text_string_to_metric_families(response.body.decode()):
        if family.name == "http_requests_in_progress":
            return sum(sample.value for sample in family.samples) - 1
    return 0.0


async def wait_in_flight(url: str, count: int) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while await in_progress(url) < count:
        assert time.monotonic() < deadline, f"{count} requests never were in flight at once"
        await asyncio.sleep(0.05)


async def health(connection: Connection) -> str:
    """What ``GET /health`` gets: a status, "closed" (refused, reset or closed), or "timeout"
    (a connection accepted by nobody)."""
    try:
        response = await connection.request("GET", "/health")
    except TimeoutError:
        return "timeout"
    except (OSError, asyncio.IncompleteReadError, ProtocolError):
        return "closed"
    return str(response.status)


async def readiness_until_closed(connection: Connection) -> list[str]:
    """``GET /health`` on one keep-alive connection, again and again, until it is closed."""
    seen: list[str] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not seen or seen[-1] not in ("closed", "timeout"):
        assert time.monotonic() < deadline, f"still open after SIGTERM: {seen[-5:]}"
        seen.append(await health(connection))
        await asyncio.sleep(0.01)
    return seen


async def _settle(tasks: list["asyncio.Task[Response]"]) -> None:
    """Cancel what is left of ``tasks`` (when the test failed early) and wait for them."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def ready_again(seen: list[str]) -> bool:
    """Whether a 200 came after the connection's first other answer."""
    first = next(i for i, outcome in enumerate(seen) if outcome != "200")
    return "200" in seen[first:]


@pytest.mark.parametrize("workers", [2, 1])
async def test_sigterm_lets_requests_in_flight_finish_and_commit(
    database_url: str, schema: Engine, workers: int
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "LOG_FORMAT": "json",
        "METRICS_ENABLED": "true",
        "TIMEOUT_GRACEFUL_SHUTDOWN": str(GRACE_SECONDS),
        # The writes wait for the test's lock, not for these.
        "DB_QUEUE_TIMEOUT": str(REQUEST_TIMEOUT),
        "SQLITE_BUSY_TIMEOUT_MS": str(int(REQUEST_TIMEOUT * 1000)),
    }
    if schema.dialect.name == "postgresql":
        # Writes waiting for the lock hold connections: leave some of the pool (15 per
        # worker) to /health.
        env["MAX_CONCURRENT_WRITES"] = "5"
    with LiveServer(env, workers=workers, serve=True) as server:
        async with AsyncExitStack() as stack:
            with Connection(server.url, timeout=10) as connection:
                body = {"email": "drain@example.com", "password": "pw"}
                user_id = (await connection.request("POST", "/users/", body)).json()["id"]
            idle = [stack.enter_context(Connection(server.url, timeout=10)) for _ in range(4)]
            assert [await health(c) for c in idle] == ["200"] * len(idle)

            async def write(n: int) -> Response:
                with Connection(server.url, timeout=REQUEST_TIMEOUT) as connection:
                    return await connection.request(
                        "POST", f"/users/{user_id}/items/", {"title": f"in flight {n}"}
                    )

            writes = [asyncio.create_task(write(n)) for n in range(IN_FLIGHT)]
            stack.push_async_callback(_settle, writes)
            with writes_blocked(schema, user_id):
                await wait_in_flight(server.url, IN_FLIGHT)
                # Idle keep-alive connections at SIGTERM (just used, so the client keeps them).
                assert [await health(c) for c in idle] == ["200"] * len(idle)
                server.terminate()
                signalled = time.monotonic()
                readiness = await asyncio.gather(*(readiness_until_closed(c) for c in idle))
                refused = await health(stack.enter_context(Connection(server.url, timeout=5)))
            async with asyncio.timeout(REQUEST_TIMEOUT):
                responses = await asyncio.gather(*writes)
            code = server.wait(DEADLINE_SECONDS)
            exited_after = time.monotonic() - signalled

    assert [r.status for r in responses] == [200] * IN_FLIGHT, [r.body for r in responses]
    # Each connection: 200s until its worker got the signal, maybe 503s, then closed; never
    # ready again. A new connection is refused, or answered 503 by a worker that is draining
    # but has not closed its socket yet (with 2 workers, the one that saw SIGTERM last);
    # never left waiting, never ready.
    assert not [seen for seen in readiness if ready_again(seen) or seen[-1] != "closed"]
    assert refused in ("closed", "503"), refused
    assert code == 0
    assert exited_after < GRACE_SECONDS
    with schema.connect() as conn:
        stored = set(conn.execute(text("SELECT id FROM items")).scalars())
    assert {r.json()["id"] for r in responses} == stored

    lines = [json.loads(line) for line in server.log_text().splitlines()]
    for pid in {line["pid"] for line in lines if line.get("route") == "/users/{user_id}/items/"}:
        mine = [line["message"] for line in lines if line["pid"] == pid]
        last_write = max(i for i, m in enumerate(mine) if m.startswith("POST /users/{user_id}/"))
        # Each worker disposes of its engines only after its last write.
        assert mine.index("Waiting for application shutdown.") > last_write
        assert mine[-2:] == ["Application shutdown complete.", f"Finished server process [{pid}]"]
    answers = Counter(outcome for seen in readiness for outcome in seen)
    print(
        f"\n{workers} worker(s), {IN_FLIGHT} writes in flight at SIGTERM: all 200 and stored; "
        f"GET /health on {len(idle)} keep-alive connections after it: {dict(answers)}, then "
        f"closed; a new connection {refused}; exit {code} after {exited_after:.1f} s"
    )


# Installed in every process of the server below (the first ``sitecustomize`` on the path).
# A worker keeps it under uvicorn's handler and, after its graceful shutdown, gets each
# SIGTERM it received again (uvicorn raises them once it restored this one): each is a line.
# It returns, so the worker exits as it would have, 0; slowly, as coverage's handler is while
# it saves its data, so that a SIGTERM sent even later is a line too.
_RECORD_SIGTERM = """
import os, signal, time


def _record(sig, frame):
    with open(os.environ["SIGTERM_RECORD"], "a") as record:
        record.write(f"{os.getpid()}\\n")
    time.sleep(1.5)


signal.signal(signal.SIGTERM, _record)
"""


@pytest.mark.any_backend  # the supervisor's signals, whatever database the workers use
def test_each_worker_gets_sigterm_once(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(_RECORD_SIGTERM)
    record = tmp_path / "sigterms"
    env = {
        "DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "SIGTERM_RECORD": str(record),
    }
    with LiveServer(env, workers=2, serve=True) as server:
        workers = server.worker_pids()
        server.terminate()
        code = server.wait(DEADLINE_SECONDS)

    assert code == 0
    assert "Traceback" not in server.log_text()
    assert sorted(int(pid) for pid in record.read_text().split()) == sorted(workers)
