"""Issue 4: two workers writing one database at once never fail, lose or duplicate a write."""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine, text

from app.testing.server import LiveServer
from tests.load import Connection, Response, register_at_once

pytestmark = [pytest.mark.slow, pytest.mark.pgbouncer]  # alone: 32 writers on two workers

WORKERS = 2
CLIENTS = 32
ITEMS_PER_CLIENT = 50
READ_EVERY = 10
RACES = 6
RACERS = 8
REQUEST_TIMEOUT = 30.0
TEST_TIMEOUT = 120.0


@dataclass
class Run:
    """What the clients were told: every acknowledged write, and whatever went wrong."""

    users: dict[int, str] = field(default_factory=dict)
    items: dict[int, tuple[str, int]] = field(default_factory=dict)
    winners: dict[str, int] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def check(self, response: Response, expected: int, what: str) -> bool:
        self.statuses[response.status] += 1
        if response.status != expected:
            self.failures.append(f"{what}: {response.status} {response.body[:200]!r}")
        return response.status == expected


async def _writer(url: str, n: int, run: Run) -> None:
    """One user, then its items, reading the user back now and then from any worker."""
    with Connection(url, timeout=REQUEST_TIMEOUT) as connection:
        email = f"writer-{n}@example.com"
        response = await connection.request("POST", "/users/", {"email": email, "password": "pw"})
        if not run.check(response, 200, f"create {email}"):
            return
        user_id = response.json()["id"]
        run.users[user_id] = email
        mine: set[int] = set()
        for i in range(ITEMS_PER_CLIENT):
            title = f"item {n}-{i}"
            response = await connection.request(
                "POST", f"/users/{user_id}/items/", {"title": title}
            )
            if not run.check(response, 200, f"create {title}"):
                continue
            item = response.json()
            run.items[item["id"]] = (item["title"], item["owner_id"])
            mine.add(item["id"])
            if i % READ_EVERY == READ_EVERY - 1:
                response = await connection.request("GET", f"/users/{user_id}")
                if run.check(response, 200, f"read user {user_id}"):
                    missing = mine - {item["id"] for item in response.json()["items"]}
                    if missing:
                        run.failures.append(f"acknowledged items not visible: {missing}")


async def _races(url: str, run: Run) -> None:
    """Rounds of RACERS clients registering the same e-mail at the same moment."""
    connections = [Connection(url, timeout=REQUEST_TIMEOUT) for _ in range(RACERS)]
    try:
        for race in range(RACES):
            email = f"race-{race}@example.com"
            responses = await register_at_once(connections, email)
            run.statuses.update(r.status for r in responses)
            statuses = sorted(r.status for r in responses)
            if statuses != [200] + [400] * (RACERS - 1):
                run.failures.append(f"race for {email}: {statuses}")
            for response in responses:
                if response.status == 200:
                    run.winners[email] = response.json()["id"]
                    run.users[response.json()["id"]] = email
                elif response.json() != {"detail": "Email already registered"}:
                    run.failures.append(f"race loser for {email}: {response.body!r}")
    finally:
        for connection in connections:
            connection.close()


def _rows(engine: Engine) -> tuple[dict[int, str], dict[int, tuple[str, int]]]:
    with engine.connect() as conn:
        users = {row.id: row.email for row in conn.execute(text("SELECT id, email FROM users"))}
        items = {
            id_: (title, owner)
            for id_, title, owner in conn.execute(text("SELECT id, title, owner_id FROM items"))
        }
    return users, items


async def test_concurrent_writers_on_two_workers(database_url: str, schema: Engine) -> None:
    # The schema exists before the workers start (two workers creating it would race on
    # PostgreSQL), and no connection of this process stays open while they run.
    schema.dispose()
    env = {"DATABASE_URL": database_url}
    # Password hashing at the test-sized cost: the subject is the writes, not the sign-ups'
    # Argon2 (at the production cost, 40 at once outlived REQUEST_TIMEOUT on a busy machine).
    light = "tests.light_app:app"
    with LiveServer(env, workers=WORKERS, extra_args=("--no-access-log",), app=light) as server:
        run = Run()
        start = time.perf_counter()
        async with asyncio.timeout(TEST_TIMEOUT):
            await asyncio.gather(
                _races(server.url, run), *(_writer(server.url, n, run) for n in range(CLIENTS))
            )
        seconds = time.perf_counter() - start
        server.stop()
        log = server.log_text()

    writes = len(run.users) + len(run.items)
    print(
        f"\n{writes} acknowledged writes from {CLIENTS} clients + {RACES}x{RACERS} racers in "
        f"{seconds:.1f}s: {writes / seconds:.0f} writes/s; statuses {dict(run.statuses)}"
    )
    assert run.failures == [], "\n".join(run.failures[:20])
    assert not [status for status in run.statuses if status >= 500]
    assert "database is locked" not in log
    assert "Traceback" not in log
    assert len(run.winners) == RACES
    assert len(run.items) == CLIENTS * ITEMS_PER_CLIENT

    users, items = _rows(schema)
    # Nothing lost, nothing extra: no request failed, so every write was acknowledged.
    assert users == run.users
    assert items == run.items
    if schema.dialect.name == "sqlite":
        with schema.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").all() == [("ok",)]
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
