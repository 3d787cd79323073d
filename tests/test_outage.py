"""PostgreSQL stopped and started again under load: every request is answered (503 within
about DB_QUEUE_TIMEOUT while it is down), none hangs, writes resume by themselves within
seconds of the restart, and no acknowledged write is lost.

The test owns its server (and PgBouncer), so stopping it disturbs no other test. It runs in
the PostgreSQL runs, in their topology: straight to the server in ``make test-postgres``,
through PgBouncer (transaction pooling, ``DB_PREPARE_THRESHOLD=none``) in
``make test-pgbouncer``.
"""

import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import psycopg
import pytest

from app.testing.plugin import BACKEND, VIA_PGBOUNCER
from app.testing.postgres import PgBouncer, PostgresServer
from app.testing.server import LiveServer
from tests.load import Connection, ProtocolError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.pgbouncer,
    pytest.mark.backend,
    pytest.mark.skipif(
        BACKEND != "postgresql",
        reason="runs in the PostgreSQL runs (make test-postgres, make test-pgbouncer)",
    ),
]

WORKERS = 2
CLIENTS = 8
QUEUE_TIMEOUT = 2
"""DB_QUEUE_TIMEOUT; PgBouncer's query_wait_timeout matches it."""
ANSWERED_WITHIN = QUEUE_TIMEOUT + 3.0
"""Every answer, 503s included; the margin is for a busy machine."""
CLIENT_TIMEOUT = 30.0
BEFORE, DOWN, AFTER = 2.0, 4.0, 4.0
RECOVERY_BOUND = 15.0
SETTLE = 2.0
"""After the first write acknowledged after the restart, this long for the last stale
connections (PgBouncer's to the server) to be replaced; then only 200s."""
PAUSE_AFTER_503 = 0.2


@dataclass(frozen=True)
class Outcome:
    write: bool
    started: float
    seconds: float
    status: int | None
    """None when the client got no answer (``error`` says why)."""
    error: str = ""


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: dict[int, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _client(url: str, n: int, user_id: int, load: Load) -> None:
    with Connection(url, timeout=CLIENT_TIMEOUT) as connection:
        i = 0
        while not load.stop.is_set():
            i += 1
            write = i % 2 == 1
            title = f"outage {n}-{i}"
            started = time.monotonic()
            try:
                if write:
                    body = {"title": title}
                    response = await connection.request("POST", f"/users/{user_id}/items/", body)
                else:
                    response = await connection.request("GET", f"/users/{user_id}")
            except TimeoutError:
                load.outcomes.append(
                    Outcome(write, started, time.monotonic() - started, None, "timeout")
                )
                continue
            except (OSError, asyncio.IncompleteReadError, ProtocolError) as error:
                load.outcomes.append(
                    Outcome(write, started, time.monotonic() - started, None, type(error).__name__)
                )
                continue
            load.outcomes.append(Outcome(write, started, response.seconds, response.status))
            if write and response.status == 200:
                load.acknowledged[response.json()["id"]] = title
            if response.status == 503:
                await asyncio.sleep(PAUSE_AFTER_503)


@pytest.fixture
def topology() -> Iterator[tuple[PostgresServer, str, dict[str, str]]]:
    """A server of the test's own, the URL the app uses (through PgBouncer in the PgBouncer
    run) and the settings that go with it."""
    with ExitStack() as stack:
        server = stack.enter_context(PostgresServer.create(databases=["app"]))
        url = server.url("app")
        env = {"DB_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT)}
        if VIA_PGBOUNCER:
            bouncer = stack.enter_context(PgBouncer(server, query_wait_timeout=QUEUE_TIMEOUT))
            url = bouncer.url("app")
            env["DB_PREPARE_THRESHOLD"] = "none"
        yield server, url, {"DATABASE_URL": url, "CREATE_SCHEMA": "true", **env}


async def test_a_server_restart_under_load(
    topology: tuple[PostgresServer, str, dict[str, str]],
) -> None:
    server, _, env = topology
    load = Load()
    with LiveServer(env, workers=WORKERS, serve=True, extra_args=("--no-access-log",)) as live:
        with Connection(live.url, timeout=CLIENT_TIMEOUT) as connection:
            body = {"email": "outage@example.com", "password": "pw"}
            user_id = (await connection.request("POST", "/users/", body)).json()["id"]
        clients = [asyncio.create_task(_client(live.url, n, user_id, load)) for n in range(CLIENTS)]
        try:
            await asyncio.sleep(BEFORE)
            stopped = time.monotonic()
            await asyncio.to_thread(server.stop, "fast")
            await asyncio.sleep(DOWN)
            await asyncio.to_thread(server.start)
            restarted = time.monotonic()
            deadline = restarted + RECOVERY_BOUND
            while not any(
                o.write and o.status == 200 and o.started > restarted for o in load.outcomes
            ):
                assert time.monotonic() < deadline, "writes did not resume after the restart"
                await asyncio.sleep(0.05)
            await asyncio.sleep(AFTER)
        finally:
            load.stop.set()
            await asyncio.gather(*clients)
        log = live.log_text()
        assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:4000]

    down = [o for o in load.outcomes if stopped <= o.started < restarted]
    unavailable = sorted(o.seconds for o in load.outcomes if o.status == 503)
    first_write = min(
        o.started + o.seconds
        for o in load.outcomes
        if o.write and o.status == 200 and o.started > restarted
    )
    late_503s = [o for o in load.outcomes if o.status == 503 and o.started > first_write]
    slowest = max(o.seconds for o in load.outcomes)
    print(
        f"\n{'through PgBouncer' if VIA_PGBOUNCER else 'direct'}: {len(load.outcomes)} "
        f"requests, {len(unavailable)} 503s (p50 {statistics.median(unavailable) * 1000:.0f} "
        f"ms, max {unavailable[-1] * 1000:.0f} ms), slowest answer {slowest:.2f} s; first "
        f"write after the restart acknowledged {first_write - restarted:.2f} s after it; "
        f"{len(late_503s)} 503s after that; {len(load.acknowledged)} acknowledged writes"
    )
    assert [o for o in load.outcomes if o.status is None] == []  # every request answered
    assert {o.status for o in load.outcomes} <= {200, 503}
    assert any(o.status == 503 for o in down)
    # Once the requests that were running when it stopped are answered, only 503s.
    assert all(o.status == 503 for o in down if o.started > stopped + ANSWERED_WITHIN)
    assert slowest < ANSWERED_WITHIN
    assert first_write - restarted < RECOVERY_BOUND
    settled = [o for o in load.outcomes if o.started > first_write + SETTLE]
    assert settled
    assert all(o.status == 200 for o in settled)  # writes stay up

    with psycopg.connect(server.url("app"), autocommit=True) as conn:
        stored: dict[int, str] = dict(conn.execute("SELECT id, title FROM items").fetchall())
    assert load.acknowledged.items() <= stored.items(), "an acknowledged write was lost"
