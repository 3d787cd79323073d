"""Read replicas in-process: WAL positions, the routing rules, the settings, and the app
without replicas exactly as before. tests/test_replicas.py runs them against real standbys."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.lifespan import replicas_configured
from app.main import create_app
from app.middleware.read_your_writes import COOKIE, HEADER, brought_position
from app.replicas.positions import format_lsn, parse_lsn
from app.replicas.replica_set import Replica, ReplicaSet
from app.testing.plugin import BACKEND
from app.units.gate import Gate
from app.units.writer import Writer
from containers import container
from tests.factories import create_item, create_user

PG_ONLY = pytest.mark.skipif(BACKEND != "postgresql", reason="replicas are PostgreSQL's")


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("0/0", 0),
        ("0/16B3748", 0x16B3748),
        ("16/B374D848", 0x16_B374D848),
        ("FF/FFFFFFFF", 2**40 - 1),
    ],
)
def test_lsn_text_round_trips(text: str, position: int) -> None:
    assert parse_lsn(text) == position
    assert format_lsn(position) == text
    assert parse_lsn(text.lower()) == position


@pytest.mark.parametrize("text", ["", "16", "16/", "/1", "x/1", "1/2/3", "123456789/0", " 0/1"])
def test_what_is_not_an_lsn_is_none(text: str) -> None:
    assert parse_lsn(text) is None


def test_the_position_a_client_brings() -> None:
    assert brought_position([]) is None
    assert brought_position([(b"x-wal-position", b"0/10")]) == 0x10
    cookies = (b"cookie", b"theme=dark; wal_position=1/0; other=2")
    assert brought_position([cookies]) == 1 << 32
    # Both, and the larger wins: a client that kept an older header after a newer cookie.
    assert brought_position([(b"x-wal-position", b"0/FF"), cookies]) == 1 << 32
    assert (
        brought_position([(b"x-wal-position", b"garbage"), (b"cookie", b"wal_position=")]) is None
    )


def _replica(name: str, *, up: bool = True, lag: float | None = 0.0, replayed: int = 0) -> Replica:
    engine = create_engine("sqlite://")
    return Replica(name, engine, lambda: Session(engine), up=up, lag=lag, replayed=replayed)


def test_replicas_take_turns_and_the_lagging_or_down_are_skipped() -> None:
    one, two, behind, down = (
        _replica("replica-1"),
        _replica("replica-2"),
        _replica("replica-3", lag=9.0),
        _replica("replica-4", up=False, lag=None),
    )
    replicas = ReplicaSet([one, two, behind, down], max_lag=5.0, check_interval=1.0)
    firsts = [replicas.candidates(None)[0].name for _ in range(4)]
    assert firsts == ["replica-1", "replica-2", "replica-1", "replica-2"]
    assert {r.name for r in replicas.candidates(None)} == {"replica-1", "replica-2"}

    # A read that must see a position tries first the replicas known to have replayed it.
    two.saw_replayed(100)
    assert all(replicas.candidates(100)[0] is two for _ in range(3))
    assert one.reached(0)
    assert not one.reached(100)

    replicas.failed(two, RuntimeError("connection refused\nmore"))
    assert (two.up, two.lag) == (False, None)
    assert two.problem == "a read failed: connection refused"
    assert replicas.candidates(None) == [one]


def test_lag_is_how_long_ago_the_primary_had_what_the_replica_lacks() -> None:
    replicas = ReplicaSet([_replica("replica-1")], max_lag=5.0, check_interval=1.0)
    now = 1000.0
    assert replicas._behind(0, now) == 0.0  # nothing known about the primary yet
    replicas._flushed.extend([(now - 3, 100), (now - 2, 200), (now - 1, 300)])
    assert replicas._behind(300, now) == 0.0
    assert replicas._behind(250, now) == 1.0
    assert replicas._behind(150, now) == 2.0
    assert replicas._behind(50, now) == 3.0
    # The primary has not answered for longer than max_lag: the replica's own view decides.
    assert replicas._behind(50, now + 6.5) == 0.0


def test_a_replica_set_needs_a_replica() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        ReplicaSet([], max_lag=1.0, check_interval=1.0)


def test_wal_positions_are_for_single_writes() -> None:
    with pytest.raises(ValueError, match="one at a time"):
        Writer(Gate(1, timeout=1.0), Session, batch_size=2, wal_positions=True)


def test_replica_urls_are_a_comma_separated_list_of_postgresql_urls() -> None:
    s = Settings(
        DATABASE_URL="postgresql://app:pw@db/app",
        DATABASE_REPLICA_URLS=" postgresql://app:pw@r1/app , postgresql+psycopg://app:pw@r2/app,",
    )
    assert s.DATABASE_REPLICA_URLS == [
        "postgresql://app:pw@r1/app",
        "postgresql+psycopg://app:pw@r2/app",
    ]
    assert Settings(DATABASE_URL="postgresql://app:pw@db/app").DATABASE_REPLICA_URLS == []


def test_a_replica_url_of_another_database_names_the_entry_not_the_password() -> None:
    with pytest.raises(ValidationError, match="entry 2 must be a postgresql://") as caught:
        Settings(
            DATABASE_URL="postgresql://app:pw@db/app",
            DATABASE_REPLICA_URLS="postgresql://app:pw@r1/app,mysql://app:hunter2@r2/app",
        )
    assert "hunter2" not in str(caught.value)


def test_replicas_need_a_postgresql_primary() -> None:
    with pytest.raises(ValidationError, match="DATABASE_REPLICA_URLS needs a PostgreSQL"):
        Settings(DATABASE_URL="sqlite:///app.db", DATABASE_REPLICA_URLS="postgresql://r1/app")


def test_without_replicas_nothing_changes(client: TestClient) -> None:
    assert not replicas_configured()
    assert container.replicas() is None
    user = client.post("/users/", json={"email": "alice@example.com", "password": "pw"})
    assert HEADER.lower() not in user.headers
    assert "set-cookie" not in user.headers
    assert COOKIE not in client.cookies
    response = client.get("/health")
    assert response.json() == {"status": "ok"}


@pytest.fixture
def self_replica(schema: Engine) -> Iterator[TestClient]:
    """An app whose replica is the primary itself: a server out of recovery has replayed
    all it wrote, so every read may go there, and the routing runs in-process."""
    replica = create_engine(schema.url)
    with (
        container.replica_engines.override([replica]),
        TestClient(create_app()) as client,
    ):
        yield client
    replica.dispose()


@PG_ONLY
def test_reads_run_on_the_replica_and_writes_hand_out_their_position(
    self_replica: TestClient,
) -> None:
    client = self_replica
    replicas = container.replicas()
    assert replicas is not None
    owner = create_user(client, "alice@example.com")["id"]
    written = client.post(f"/users/{owner}/items/", json={"title": "Pen"})
    position = parse_lsn(written.headers[HEADER])
    assert position is not None
    assert position > 0
    assert client.cookies[COOKIE] == written.headers[HEADER]
    assert "HttpOnly" in written.headers["set-cookie"]

    (replica,) = replicas.replicas
    assert replicas.serves(replica)
    assert client.get(f"/items/{written.json()['id']}").status_code == 200
    assert replica.reached(position)  # the read checked it, on the replica

    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["engines"]["replica-1"] == {"up": True, "lag_seconds": 0.0}
    create_item(client, owner, title="Cup")
    assert [i["title"] for i in client.get(f"/users/{owner}").json()["items"]] == ["Pen", "Cup"]


@PG_ONLY
def test_an_unreachable_replica_costs_no_read(schema: Engine) -> None:
    # A closed port: every connection is refused at once.
    nowhere = create_engine(schema.url.set(host="127.0.0.1", port=9), pool_pre_ping=True)
    with (
        container.replica_engines.override([nowhere]),
        TestClient(create_app()) as client,
    ):
        owner = create_user(client, "alice@example.com")["id"]
        for _ in range(3):
            assert client.get(f"/users/{owner}").status_code == 200
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["engines"]["replica-1"] == {"up": False, "lag_seconds": None}
    nowhere.dispose()
