"""Idempotency-Key on POST and PATCH (docs/idempotency.md): one change per key, its answer
replayed, stored in the change's own transaction, on SQLite, PostgreSQL and PgBouncer."""

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from dependency_injector import providers
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.database import SessionLocal
from app.main import create_app
from app.models import IdempotencyKey, Item, User
from app.schemas import ItemCreate, ItemRead
from app.services import ItemService
from app.testing.plugin import BACKEND, bearer, count_rows
from app.testing.routes import example_requests
from app.testing.server import LiveServer
from app.units.idempotency import IdempotencyKeys, KeyedRequest, KeyedWrite, WriteUnit
from containers import container
from tests.factories import create_item, create_user, seed_ids, unique_email
from tests.load import Connection, ProtocolError

pytestmark = pytest.mark.pgbouncer

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
PEN = {"title": "Pen", "description": "blue"}


def keyed(key: str = KEY) -> dict[str, str]:
    return {"Idempotency-Key": key}


def test_a_post_sent_twice_makes_one_row_and_replays_its_answer(client: TestClient) -> None:
    owner = create_user(client)["id"]
    first = client.post(f"/users/{owner}/items/", json=PEN, headers=keyed())
    again = client.post(f"/users/{owner}/items/", json=PEN, headers=keyed(f'"{KEY}"'))
    assert first.status_code == again.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert again.headers["content-type"] == "application/json"
    assert count_rows(Item) == 1
    assert count_rows(IdempotencyKey) == 1
    # Without a key, nothing changes: each POST makes its row.
    assert client.post(f"/users/{owner}/items/", json=PEN).json()["id"] != first.json()["id"]


def test_the_same_key_with_another_request_is_a_422(client: TestClient) -> None:
    owner = create_user(client)["id"]
    other = create_user(client)["id"]
    assert client.post(f"/users/{owner}/items/", json=PEN, headers=keyed()).status_code == 200
    for path, body in [
        (f"/users/{owner}/items/", {"title": "Cap"}),
        (f"/users/{other}/items/", PEN),
    ]:
        response = client.post(path, json=body, headers=keyed())
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["type"] == "idempotency_key_reused"
        assert error["loc"] == ["header", "Idempotency-Key"]
        assert "different request" in error["msg"]
    assert count_rows(Item) == 1
    # Another route is another scope: the same key is free there.
    assert client.post(
        "/users/", json={"email": "k@example.com", "password": "pw"}, headers=keyed()
    )
    assert count_rows(User, User.email == "k@example.com") == 1


def test_a_patch_with_a_key_replays_its_answer_and_etag(client: TestClient) -> None:
    item = create_item(client, create_user(client)["id"])
    first = client.patch(f"/items/{item['id']}", json={"title": "Cap"}, headers=keyed())
    again = client.patch(f"/items/{item['id']}", json={"title": "Cap"}, headers=keyed())
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["ETag"] == first.headers["ETag"] == '"2"'
    assert client.get(f"/items/{item['id']}").headers["ETag"] == '"2"'  # applied once
    # A stale If-Match (412) rolls back and stores nothing: the key stays free.
    stale = client.patch(
        f"/items/{item['id']}", json={"title": "Box"}, headers={**keyed("b"), "If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert (
        client.patch(f"/items/{item['id']}", json={"title": "Box"}, headers=keyed("b")).json()[
            "title"
        ]
        == "Box"
    )


def test_refused_requests_store_nothing_and_leave_the_key_free(client: TestClient) -> None:
    owner = create_user(client)["id"]
    invalid = client.post(f"/users/{owner}/items/", json={"title": ""}, headers=keyed())
    assert invalid.status_code == 422
    missing = client.post("/users/999/items/", json=PEN, headers=keyed())  # the endpoint's 404
    assert missing.status_code == 404
    taken = {"email": "t@example.com", "password": "pw"}
    create_user(client, taken["email"])
    assert client.post("/users/", json=taken, headers=keyed()).status_code == 400  # raised
    assert count_rows(IdempotencyKey) == 0
    response = client.post(f"/users/{owner}/items/", json=PEN, headers=keyed())
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers


@pytest.mark.parametrize(
    "value",
    ["", " ", '"', '"abc', 'abc"', "a b", "a,b", "a;b", "a\\b", '""', "x" * 256, f'"{"x" * 256}"'],
)
def test_a_malformed_key_is_a_422_before_any_work(client: TestClient, value: str) -> None:
    owner = create_user(client)["id"]
    response = client.post(f"/users/{owner}/items/", json=PEN, headers={"Idempotency-Key": value})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "idempotency_key"
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert "255 printable ASCII" in error["msg"]
    assert count_rows(Item) == 0


def test_key_syntax_accepted(client: TestClient) -> None:
    owner = create_user(client)["id"]
    for value in ["x" * 255, '"a b"', '"a\\"b\\\\c"', "a:b/c", f'"{"y" * 255}"']:
        response = client.post(
            f"/users/{owner}/items/", json=PEN, headers={"Idempotency-Key": value}
        )
        assert response.status_code == 200, (value, response.text)
        assert "Idempotent-Replayed" not in response.headers
    two = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    response = client.post(f"/users/{owner}/items/", json=PEN, headers=two)
    assert response.status_code == 422
    # DELETE ignores the header: it is idempotent by itself.
    item = create_item(client, owner)
    assert client.delete(f"/items/{item['id']}", headers={"Idempotency-Key": "a b"}).json() == {
        "ok": True
    }


def test_a_stored_user_never_holds_the_password(client: TestClient) -> None:
    password = "s3cret-never-stored"
    body = {"email": "p@example.com", "password": password}
    first = client.post("/users/", json=body, headers=keyed())
    again = client.post("/users/", json=body, headers=keyed())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    with SessionLocal() as session:
        [row] = session.scalars(select(IdempotencyKey)).all()
    assert password.encode() not in (row.body or b"")
    assert KEY not in (row.key_hash, row.fingerprint)  # the key is stored hashed
    assert len(row.key_hash) == len(row.fingerprint) == 64


def test_an_expired_key_is_new_again_and_expired_keys_are_swept(client: TestClient) -> None:
    owner = create_user(client)["id"]
    stale = IdempotencyKey(
        key_hash="0" * 64, fingerprint="0" * 64, status_code=200, body=b"{}", expires_at=1.0
    )
    with SessionLocal.begin() as session:
        session.add(stale)
    first = client.post(f"/users/{owner}/items/", json=PEN, headers=keyed())
    assert count_rows(IdempotencyKey, IdempotencyKey.key_hash == "0" * 64) == 0  # swept
    with SessionLocal.begin() as session:
        session.execute(update(IdempotencyKey).values(expires_at=time.time() - 1))
    # Expired: the key is new again, even for another body.
    second = client.post(f"/users/{owner}/items/", json={"title": "Cap"}, headers=keyed())
    assert second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert count_rows(Item) == 2
    assert count_rows(IdempotencyKey) == 1
    again = client.post(f"/users/{owner}/items/", json={"title": "Cap"}, headers=keyed())
    assert again.json() == second.json()


def test_the_sweep_is_bounded(client: TestClient) -> None:
    rows = [
        {"key_hash": f"{n:064d}", "fingerprint": "0" * 64, "expires_at": float(n)}
        for n in range(1, 6)
    ]
    with SessionLocal.begin() as session:
        session.execute(insert(IdempotencyKey), rows)
        keys = container.idempotency_keys()
        keys.sweep_limit = 2
        assert keys.sweep(session.connection(), now=4.5) == 2  # the oldest two
        assert keys.sweep(session.connection(), now=4.5) == 2
        assert keys.sweep(session.connection(), now=4.5) == 0  # the fifth has not expired
    assert count_rows(IdempotencyKey) == 1


def test_eight_at_once_with_one_key_make_one_row(client: TestClient) -> None:
    """Concurrent repeats, with other writes in the same group commit (SQLite) that fail and
    make every write of the batch run again alone; on PostgreSQL the repeats wait on the
    key's unique index, then replay."""
    owner = create_user(client)["id"]
    taken = create_user(client)["email"]

    def post(n: int) -> Any:
        if n % 3 == 2:  # a failing write (400) beside them
            return client.post("/users/", json={"email": taken, "password": "pw"})
        return client.post(f"/users/{owner}/items/", json=PEN, headers=keyed())

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(post, range(12)))
    keyed_responses = [r for n, r in enumerate(responses) if n % 3 != 2]
    assert len(keyed_responses) == 8
    assert {r.status_code for r in keyed_responses} == {200}
    assert len({r.content for r in keyed_responses}) == 1
    replayed = [r.headers.get("Idempotent-Replayed") for r in keyed_responses]
    assert sorted(replayed, key=str) == [None] + ["true"] * 7
    assert {r.status_code for n, r in enumerate(responses) if n % 3 == 2} == {400}
    assert count_rows(Item) == 1


class _SlowItems(ItemService):
    def create_for_user(
        self, session: Session, user_id: int, item_in: ItemCreate, *, caller_id: int | None
    ) -> ItemRead | None:
        time.sleep(1.0)  # the first request holds the key's transaction
        return super().create_for_user(session, user_id, item_in, caller_id=caller_id)


@pytest.fixture
def short_wait_client(schema: Engine, settings: Settings) -> Iterator[TestClient]:
    quick = settings.model_copy(update={"DB_QUEUE_TIMEOUT": 0.3})
    with container.settings.override(quick), TestClient(create_app()) as test_client:
        yield test_client


def test_a_repeat_while_the_first_runs_is_told_to_retry(short_wait_client: TestClient) -> None:
    client = short_wait_client
    owner = create_user(client)["id"]
    with (
        container.item_service.override(providers.Factory(_SlowItems)),
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        first = pool.submit(client.post, f"/users/{owner}/items/", json=PEN, headers=keyed())
        time.sleep(0.2)
        repeat = client.post(f"/users/{owner}/items/", json=PEN, headers=keyed())
        assert first.result().status_code == 200
    # PostgreSQL: the repeat waited DB_QUEUE_TIMEOUT on the key's index; SQLite: in the write
    # queue, as any write does while another holds the database.
    assert repeat.status_code == (409 if BACKEND == "postgresql" else 503), repeat.text
    assert repeat.headers["Retry-After"] == "1"
    retried = client.post(f"/users/{owner}/items/", json=PEN, headers=keyed())
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json() == first.result().json()
    assert count_rows(Item) == 1


def test_keys_are_scoped_to_the_caller_with_auth_on(auth_client: TestClient) -> None:
    client = auth_client
    alice, bob = create_user(client)["id"], create_user(client)["id"]
    path = f"/users/{alice}/items/"
    assert client.post(path, json=PEN, headers=keyed()).status_code == 401  # not stored
    assert client.post(path, json=PEN, headers={**keyed(), **bearer(bob)}).status_code == 403
    assert count_rows(IdempotencyKey) == 0
    first = client.post(path, json=PEN, headers={**keyed(), **bearer(alice)})
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    again = client.post(path, json=PEN, headers={**keyed(), **bearer(alice)})
    assert again.headers["Idempotent-Replayed"] == "true"
    # Bob's key is Bob's: the same key on the same route makes his own item.
    bobs = client.post(f"/users/{bob}/items/", json=PEN, headers={**keyed(), **bearer(bob)})
    assert bobs.status_code == 200
    assert "Idempotent-Replayed" not in bobs.headers
    assert bobs.json()["owner_id"] == bob
    assert count_rows(Item) == 2


def test_login_and_logout_take_no_key(auth_client: TestClient) -> None:
    schema = auth_client.get("/openapi.json").json()
    for path in ("/token", "/logout"):
        parameters = schema["paths"][path]["post"].get("parameters", [])
        assert "Idempotency-Key" not in [p["name"] for p in parameters]


def test_openapi_declares_the_header_on_every_keyed_operation(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    keyed_operations = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", [])]
            if "Idempotency-Key" not in names:
                continue
            keyed_operations.append(f"{method.upper()} {path}")
            [parameter] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
            assert parameter["in"] == "header"
            assert not parameter["required"]
            assert "24 hours" in parameter["description"]
            assert "409" in operation["responses"]
            assert "Retry-After" in operation["responses"]["409"]["headers"]
            assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"]
    assert sorted(keyed_operations) == [
        "PATCH /items/{item_id}",
        "PATCH /users/{user_id}",
        "POST /users/",
        "POST /users/{user_id}/items/",
    ]


async def test_a_retry_after_a_crash_between_commit_and_answer_replays(
    database_url: str, schema: Engine
) -> None:
    """kill -9 right after the commit (a test-only hook): the client never got its answer;
    its retry, to a new server, gets the stored one instead of a second item."""
    schema.dispose()
    env = {"DATABASE_URL": database_url}
    crash = {**keyed(), "X-Test-Crash-After-Commit": "1"}
    with LiveServer(env, app="tests.idempotency_crash_app:app") as server:
        with Connection(server.url, timeout=10) as connection:
            user = await connection.request("POST", "/users/", {"email": "c@x.io", "password": "p"})
            owner = user.json()["id"]
            with pytest.raises((OSError, asyncio.IncompleteReadError, ProtocolError)):
                await connection.request("POST", f"/users/{owner}/items/", PEN, crash)
        assert server.wait(10) == -9
    with (
        LiveServer(env) as server,
        Connection(server.url, timeout=10) as connection,
    ):
        retry = await connection.request("POST", f"/users/{owner}/items/", PEN, keyed())
        assert retry.status == 200
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["title"] == "Pen"
    assert count_rows(Item) == 1


class _LockTimeoutItems(ItemService):
    def create_for_user(
        self, session: Session, user_id: int, item_in: ItemCreate, *, caller_id: int | None
    ) -> ItemRead | None:
        # The claim bounds its own wait only: the work waits for locks as it always did.
        assert session.execute(text("SHOW lock_timeout")).scalar() == "0"
        return super().create_for_user(session, user_id, item_in, caller_id=caller_id)


@pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL's lock_timeout")
def test_the_claims_lock_timeout_ends_with_the_claim(client: TestClient) -> None:
    owner = create_user(client)["id"]
    with container.item_service.override(providers.Factory(_LockTimeoutItems)):
        response = client.post(f"/users/{owner}/items/", json=PEN, headers=keyed())
    assert response.status_code == 200, response.text


async def test_a_keyed_request_makes_one_write() -> None:
    """The key and the answer live in one unit's transaction: a second write is a bug."""
    keys = IdempotencyKeys(ttl_hours=1, lock_wait=1)
    request = keys.keyed_request(
        key="k",
        caller=None,
        method="POST",
        route="/x",
        target="/x",
        body=b"",
        status_code=200,
        render=lambda result: (b"{}", None),
    )

    async def writer(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return "done"

    async def prepare() -> KeyedRequest:
        return request

    write = KeyedWrite(cast(WriteUnit, writer), keys, prepare)
    assert await write(lambda session: "work") == "done"
    with pytest.raises(RuntimeError, match="in one write"):
        await write(lambda session: "work")


def test_every_keyed_operation_answers_once_and_replays(client: TestClient) -> None:
    """No per-route step: every operation that declares the key (a route added later too)
    keeps the contract with its OpenAPI example, once stored, once replayed."""
    schema = client.get("/openapi.json").json()
    ids = seed_ids()
    checked = []
    for request in example_requests(cast(FastAPI, client.app), ids):
        operation = schema["paths"][request.template][request.method.lower()]
        if "Idempotency-Key" not in [p["name"] for p in operation.get("parameters", [])]:
            continue
        body = request.body
        if body is not None and "email" in body:
            body["email"] = unique_email("keyed")
        key = keyed(f"every-{request.method}-{request.template}")
        first = request.send(client, headers=key)
        again = request.send(client, headers=key)
        assert first.status_code == 200, (request, first.text)
        assert again.headers.get("Idempotent-Replayed") == "true", (request, again.text)
        assert again.content == first.content
        checked.append(request.template)
    assert len(checked) == 4
