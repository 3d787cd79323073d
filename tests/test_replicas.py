"""Read replicas against real servers: a primary, a streaming standby, and a standby that
applies the WAL 2 s late, each started by the test from the PostgreSQL binaries.

The module owns its servers (stopping them disturbs no other test) and runs in the
PostgreSQL run (``make test-postgres``), with a real ``uvicorn`` serving the app.
"""

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.middleware.read_your_writes import COOKIE, HEADER
from app.replicas.replica_set import PRIMARY
from app.testing.plugin import BACKEND, VIA_PGBOUNCER, settings_free_environ
from app.testing.postgres import PostgresServer, missing_binaries
from app.testing.server import LiveServer
from tests.load import Request, run_load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.backend,
    pytest.mark.skipif(
        BACKEND != "postgresql" or VIA_PGBOUNCER,
        reason="runs in the PostgreSQL run (make test-postgres), with servers of its own",
    ),
]

DATABASE = "app"
APPLY_DELAY = 2.0
"""recovery_min_apply_delay of the lagging standby, seconds."""
TRIES = 100
DEADLINE = 30.0
"""Bound on every wait for a server or replica to come back; generous for a busy machine."""
CHECK_SECONDS = 0.2
"""DB_REPLICA_CHECK_SECONDS: the monitor notices a stopped or returning server quickly."""


@pytest.fixture(scope="module")
def primary() -> Iterator[PostgresServer]:
    missing = missing_binaries()
    assert not missing, f"install PostgreSQL 15 and PgBouncer; missing: {', '.join(missing)}"
    with PostgresServer.create(databases=[DATABASE]) as server:
        yield server


@pytest.fixture(scope="module")
def standby(primary: PostgresServer) -> Iterator[PostgresServer]:
    with primary.standby() as server:
        yield server


@pytest.fixture(scope="module")
def lagging(primary: PostgresServer) -> Iterator[PostgresServer]:
    with primary.standby(apply_delay=APPLY_DELAY) as server:
        yield server


def _serve(primary: PostgresServer, *replicas: PostgresServer, **env: str) -> LiveServer:
    settings = {
        "DATABASE_URL": primary.url(DATABASE),
        "DATABASE_REPLICA_URLS": ",".join(replica.url(DATABASE) for replica in replicas),
        "DB_REPLICA_CHECK_SECONDS": str(CHECK_SECONDS),
        "DB_REPLICA_MAX_LAG_SECONDS": "60",
        "DB_QUEUE_TIMEOUT": "2",
        "METRICS_ENABLED": "true",
        "MIGRATE_ON_STARTUP": "true",  # on the primary, where `app db` runs too
    }
    return LiveServer(settings_free_environ(**(settings | env)), serve=True)


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE:.0f} s")
        time.sleep(0.05)


def _reads_by_engine(client: httpx2.Client) -> dict[str, float]:
    """``db_reads_total`` by engine: ``engine`` is the primary, ``replica-1`` the first replica."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "db_reads":
            for sample in family.samples:
                if sample.name == "db_reads_total":
                    found[sample.labels["engine"]] = sample.value
    return found


def _user(client: httpx2.Client) -> int:
    response = client.post(
        "/users/", json={"email": f"{uuid.uuid4().hex}@example.com", "password": "pw"}
    )
    assert response.status_code == 200, response.text
    user_id: int = response.json()["id"]
    return user_id


def _health(client: httpx2.Client) -> dict[str, Any]:
    response = client.get("/health")
    body: dict[str, Any] = response.json()
    return {"code": response.status_code, **body}


def test_a_client_reads_its_writes_on_a_replica_2_s_behind(
    primary: PostgresServer, lagging: PostgresServer
) -> None:
    with (
        _serve(primary, lagging) as server,
        httpx2.Client(base_url=server.url) as writer,
        httpx2.Client(base_url=server.url) as stranger,
    ):
        assert set(_reads_by_engine(writer)) == {PRIMARY, "replica-1"}  # from the start, at 0
        owner = _user(writer)
        # Once it has the schema (the migration at startup), every read may go to it.
        _eventually(lambda: lagging.has_replayed(primary), "the replica replaying the schema")
        stale = 0
        for n in range(TRIES):
            created = writer.post(f"/users/{owner}/items/", json={"title": f"try {n}"})
            assert created.status_code == 200, created.text
            assert HEADER.lower() in created.headers
            assert COOKIE in writer.cookies
            item = created.json()
            # At once, with the cookie its write set: the write, every time.
            seen = writer.get(f"/items/{item['id']}")
            assert (seen.status_code, seen.json()) == (200, item), n
            # A client that wrote nothing reads from the replica, 2 s behind.
            stale += stranger.get(f"/items/{item['id']}").status_code == 404
        assert stale > 0, "the stranger always saw the new item: its reads are not on the replica"
        listed = writer.get(f"/users/{owner}").json()["items"]
        assert [item["title"] for item in listed] == [f"try {n}" for n in range(TRIES)]

        # The header alone does it too, for clients without a cookie jar.
        last = writer.post(f"/users/{owner}/items/", json={"title": "last"})
        by_header = stranger.get(
            f"/items/{last.json()['id']}", headers={HEADER: last.headers[HEADER]}
        )
        assert by_header.status_code == 200

        reads = _reads_by_engine(writer)
        assert reads.get("replica-1", 0) >= stale
        assert reads.get(PRIMARY, 0) >= TRIES


def test_a_replica_stopped_mid_load_costs_no_read(
    primary: PostgresServer, standby: PostgresServer
) -> None:
    with _serve(primary, standby) as server, httpx2.Client(base_url=server.url) as client:
        owner = _user(client)
        for n in range(20):
            client.post(f"/users/{owner}/items/", json={"title": f"item {n}"})
        _eventually(lambda: standby.has_replayed(primary), "the standby replaying the items")

        def request(n: int) -> Request:
            return ("GET", f"/users/{owner}" if n % 2 else "/items/?limit=20", None)

        async def load_and_stop() -> Any:
            load = asyncio.create_task(
                run_load(server.url, connections=4, seconds=6.0, request=request)
            )
            await asyncio.sleep(2.0)
            before = _reads_by_engine(client).get("replica-1", 0)
            await asyncio.to_thread(standby.stop, "immediate")
            return before, await load

        try:
            on_replica_before, result = asyncio.run(load_and_stop())
            health = _health(client)
        finally:
            standby.start()
        assert on_replica_before > 0, "the replica served nothing before it stopped"
        assert not result.errors, result.summary()
        rejected = [(r.status, r.body) for r in result.rejected[:5]]
        assert set(result.statuses) == {200}, (result.summary(), rejected)
        assert health["code"] == 200
        assert health["status"] == "ok"
        assert health["engines"]["replica-1"] == {"up": False, "lag_seconds": None}

        def serving_again() -> bool:
            return bool(_health(client)["engines"]["replica-1"]["up"])

        _eventually(serving_again, "the restarted replica serving again")
        after = _reads_by_engine(client).get("replica-1", 0)
        for _ in range(10):
            assert client.get(f"/users/{owner}").status_code == 200
        assert _reads_by_engine(client)["replica-1"] > after


def test_with_the_primary_down_reads_go_on_and_writes_resume_after(
    primary: PostgresServer, standby: PostgresServer
) -> None:
    with (
        _serve(primary, standby) as server,
        httpx2.Client(base_url=server.url) as writer,
        httpx2.Client(base_url=server.url) as reader,
    ):
        owner = _user(writer)
        item = writer.post(f"/users/{owner}/items/", json={"title": "before"}).json()
        _eventually(lambda: standby.has_replayed(primary), "the standby replaying the item")
        primary.stop()
        try:
            for client in (reader, writer):  # with and without the write's position
                for _ in range(10):
                    user = client.get(f"/users/{owner}")
                    assert user.status_code == 200, user.text
                    assert user.json()["items"] == [item]
                assert client.get("/items/?limit=5").status_code == 200
            refused = writer.post(f"/users/{owner}/items/", json={"title": "while down"})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"]
            health = _health(reader)
        finally:
            primary.start()
        assert health["code"] == 200
        assert health["status"] == "read_only"
        assert health["engines"]["primary"] == {"up": False, "lag_seconds": None}
        assert health["engines"]["replica-1"]["up"] is True

        deadline = time.monotonic() + DEADLINE
        while (
            again := writer.post(f"/users/{owner}/items/", json={"title": "after"})
        ).status_code != 200:
            assert again.status_code == 503, again.text
            assert time.monotonic() < deadline, "writes did not resume after the restart"
            time.sleep(0.1)
        titles = [i["title"] for i in writer.get(f"/users/{owner}").json()["items"]]
        assert titles == ["before", "after"]
        assert _health(reader)["status"] == "ok"


def test_a_replica_too_far_behind_serves_no_reads_until_it_catches_up(
    primary: PostgresServer, lagging: PostgresServer
) -> None:
    with (
        _serve(primary, lagging, DB_REPLICA_MAX_LAG_SECONDS="0.5") as server,
        httpx2.Client(base_url=server.url) as writer,
        httpx2.Client(base_url=server.url) as stranger,
    ):
        owner = _user(writer)
        _eventually(lambda: lagging.has_replayed(primary), "the replica replaying the schema")

        def write(title: str) -> int:
            response = writer.post(f"/users/{owner}/items/", json={"title": title})
            assert response.status_code == 200, response.text
            item_id: int = response.json()["id"]
            return item_id

        # Writes for longer than APPLY_DELAY: the replica ends up 2 s behind, 4x the bound.
        busy_until = time.monotonic() + APPLY_DELAY + 1.0
        while time.monotonic() < busy_until:
            write("keep it busy")

        def lag() -> float:
            write("keep it busy")  # the writes go on, so it stays that far behind
            return float(_health(stranger)["engines"]["replica-1"]["lag_seconds"] or 0)

        _eventually(lambda: lag() > 1.0, "the replica's lag showing in /health")
        on_replica = _reads_by_engine(writer).get("replica-1", 0)
        for n in range(20):
            item_id = write(f"fresh {n}")
            # Too far behind: the stranger's reads go to the primary, which has the item.
            assert stranger.get(f"/items/{item_id}").status_code == 200, n
        assert _reads_by_engine(writer).get("replica-1", 0) == on_replica

        # The writes stop; once it has caught up, it serves again.
        _eventually(lambda: lagging.has_replayed(primary), "the replica catching up")
        _eventually(lambda: _health(stranger)["engines"]["replica-1"]["lag_seconds"] == 0, "lag 0")
        for _ in range(5):
            assert stranger.get(f"/users/{owner}").status_code == 200
        assert _reads_by_engine(writer)["replica-1"] >= on_replica + 5
