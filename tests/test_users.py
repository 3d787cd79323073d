"""/users: the HTTP contract of DESIGN.md, password storage and the same-e-mail race."""

import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.database import SessionLocal, ensure_database_schema
from app.models import Item, User
from app.testing.plugin import count_rows, engine_pair
from containers import container
from tests.factories import PASSWORD, add, create_item, create_user

USER_KEYS = {"id", "email", "is_active", "items"}


def stored_users() -> list[User]:
    with SessionLocal() as session:
        return list(session.scalars(select(User).order_by(User.id)))


def test_create_user_returns_the_user_without_password(client: TestClient) -> None:
    response = client.post("/users/", json={"email": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == USER_KEYS
    assert isinstance(body["id"], int)
    assert body["email"] == "alice@example.com"
    assert body["is_active"] is True
    assert body["items"] == []
    assert PASSWORD not in response.text
    assert "argon2" not in response.text
    assert "password" not in response.text
    [user] = stored_users()
    assert (user.id, user.email) == (body["id"], "alice@example.com")


def test_the_password_is_stored_as_a_salted_argon2_hash(client: TestClient) -> None:
    create_user(client, "alice@example.com")
    create_user(client, "bob@example.com")
    alice, bob = stored_users()
    assert alice.hashed_password.startswith("$argon2id$")
    assert PASSWORD not in alice.hashed_password
    assert alice.hashed_password != bob.hashed_password  # salted
    hasher = container.password_hasher()
    assert hasher.verify(PASSWORD, alice.hashed_password)
    assert not hasher.verify("wrong password", alice.hashed_password)


def test_duplicate_email_is_400(client: TestClient) -> None:
    create_user(client, "alice@example.com")
    response = client.post("/users/", json={"email": "alice@example.com", "password": "other"})
    assert response.status_code == 400
    assert response.json() == {"detail": "Email already registered"}
    assert len(stored_users()) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": PASSWORD},
        {"email": "alice@", "password": PASSWORD},
        {"email": "", "password": PASSWORD},
        {"email": "alice@example.com"},
        {"password": PASSWORD},
        {"email": "alice@example.com", "password": ""},
        {"email": "alice@example.com", "password": None},
        {},
        [],
    ],
)
def test_invalid_user_bodies_are_422(client: TestClient, body: Any) -> None:
    response = client.post("/users/", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert stored_users() == []


def test_a_body_that_is_not_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/users/", content=b"email=a@example.com", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_list_users_in_creation_order_with_items(client: TestClient) -> None:
    created = [create_user(client, f"user{i}@example.com") for i in range(5)]
    item = client.post(f"/users/{created[1]['id']}/items/", json={"title": "Pen"}).json()
    response = client.get("/users/")
    assert response.status_code == 200
    body = response.json()
    assert [u["email"] for u in body] == [f"user{i}@example.com" for i in range(5)]
    assert all(set(u) == USER_KEYS for u in body)
    assert body[1]["items"] == [item]
    assert [u["items"] for u in body[:1] + body[2:]] == [[]] * 4


def test_list_users_paginates_stably(client: TestClient) -> None:
    ids = [create_user(client, f"user{i}@example.com")["id"] for i in range(7)]
    assert ids == sorted(ids)
    pages = [
        [u["id"] for u in client.get("/users/", params={"skip": skip, "limit": 3}).json()]
        for skip in (0, 3, 6, 9)
    ]
    assert pages == [ids[0:3], ids[3:6], ids[6:7], []]
    assert [u["id"] for u in client.get("/users/").json()] == ids  # defaults: skip=0, limit=100
    assert [u["id"] for u in client.get("/users/?limit=1&skip=2").json()] == [ids[2]]


@pytest.mark.parametrize(
    "query",
    [
        "skip=-1",
        "limit=0",
        "limit=-5",
        "limit=1001",
        "skip=abc",
        "limit=1.5",
        f"skip={2**63}",  # beyond every database's integers
        "after_id=-1",
        f"after_id={2**31}",  # beyond the 32-bit id column
    ],
)
def test_list_users_rejects_bad_bounds(client: TestClient, query: str) -> None:
    response = client.get(f"/users/?{query}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("limit=1000", 1),
        ("limit=1", 1),
        ("skip=0", 1),
        ("skip=1", 0),
        (f"skip={2**63 - 1}", 0),
        ("after_id=0", 1),
        (f"after_id={2**31 - 1}", 0),
    ],
)
def test_list_users_accepts_the_bounds(client: TestClient, query: str, found: int) -> None:
    create_user(client, "alice@example.com")
    response = client.get(f"/users/?{query}")
    assert response.status_code == 200
    assert len(response.json()) == found


def test_get_user(client: TestClient) -> None:
    alice = create_user(client, "alice@example.com")
    create_user(client, "bob@example.com")
    item = client.post(f"/users/{alice['id']}/items/", json={"title": "Pen"}).json()
    response = client.get(f"/users/{alice['id']}")
    assert response.status_code == 200
    assert response.json() == {**alice, "items": [item]}


@pytest.mark.parametrize("user_id", ["2", "999", "0", "-1", str(-(2**31)), str(2**31 - 1)])
def test_get_missing_user_is_404(client: TestClient, user_id: str) -> None:
    create_user(client, "alice@example.com")
    response = client.get(f"/users/{user_id}")
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


@pytest.mark.parametrize("user_id", ["alice", "1.5", str(-(2**31) - 1), str(2**31), str(2**63)])
def test_get_user_with_an_invalid_id_is_422(client: TestClient, user_id: str) -> None:
    response = client.get(f"/users/{user_id}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


@pytest.mark.pgbouncer
def test_same_email_race_has_exactly_one_winner(client: TestClient) -> None:
    racers = 8
    barrier = threading.Barrier(racers)
    statuses: list[int] = []
    lock = threading.Lock()

    def register(n: int) -> None:
        barrier.wait(timeout=30)
        response = client.post(
            "/users/", json={"email": "race@example.com", "password": f"password {n}"}
        )
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert Counter(statuses) == {200: 1, 400: 7}
    assert count_rows(User, User.email == "race@example.com") == 1


@pytest.fixture
async def second_database(tmp_path: Path) -> AsyncIterator[tuple[Engine, AsyncEngine]]:
    """Another database, of another backend when the tests run on PostgreSQL."""
    async with engine_pair(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'second.db'}")) as engines:
        yield engines


def test_provider_overrides_reach_http_requests(
    client: TestClient, second_database: tuple[Engine, AsyncEngine]
) -> None:
    create_user(client, "first@example.com")
    other, other_async = second_database
    with container.engine.override(other), container.async_engine.override(other_async):
        ensure_database_schema()
        assert client.get("/users/").json() == []
        create_user(client, "second@example.com")
        assert [u["email"] for u in client.get("/users/").json()] == ["second@example.com"]
    assert [u["email"] for u in client.get("/users/").json()] == ["first@example.com"]
    with container.engine.override(other):
        assert [u["email"] for u in client.get("/users/").json()] == ["second@example.com"]


# Change and delete a user


def test_patch_user_changes_the_fields_sent_and_rehashes_a_new_password(
    client: TestClient,
) -> None:
    user = create_user(client, "before@example.com")
    path = f"/users/{user['id']}"
    response = client.patch(path, json={"email": "after@example.com"})
    assert response.status_code == 200
    assert response.json() == {**user, "email": "after@example.com"}
    assert response.headers["etag"] == '"2"'
    old_hash = stored_users()[0].hashed_password
    response = client.patch(path, json={"password": "a new one", "is_active": False})
    assert response.json() == {**user, "email": "after@example.com", "is_active": False}
    assert "password" not in response.text
    [stored] = stored_users()
    assert stored.hashed_password != old_hash
    assert container.password_hasher().verify("a new one", stored.hashed_password)


@pytest.mark.parametrize(
    "body",
    [
        {"email": None},
        {"email": "not-an-email"},
        {"password": ""},
        {"is_active": None},
        {"is_active": 0},
    ],
)
def test_patch_user_rejects_bad_fields(client: TestClient, body: dict[str, Any]) -> None:
    user = create_user(client)
    assert client.patch(f"/users/{user['id']}", json=body).status_code == 422
    assert client.get(f"/users/{user['id']}").json() == user


def test_patch_user_to_a_taken_email_is_400(client: TestClient) -> None:
    create_user(client, "taken@example.com")
    user = create_user(client)
    response = client.patch(f"/users/{user['id']}", json={"email": "taken@example.com"})
    assert (response.status_code, response.json()) == (400, {"detail": "Email already registered"})
    assert client.get(f"/users/{user['id']}").json() == user


@pytest.mark.pgbouncer
def test_concurrent_renames_to_one_email_have_exactly_one_winner(client: TestClient) -> None:
    users = [create_user(client)["id"] for _ in range(6)]
    statuses: list[int] = []
    barrier = threading.Barrier(len(users))

    def rename(user_id: int) -> None:
        barrier.wait(timeout=10)
        response = client.patch(f"/users/{user_id}", json={"email": "wanted@example.com"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=rename, args=(user_id,)) for user_id in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200] + [400] * 5
    assert [u.email for u in stored_users()].count("wanted@example.com") == 1


def test_delete_user_deletes_their_items(client: TestClient) -> None:
    alice, bob = create_user(client)["id"], create_user(client)["id"]
    for owner in (alice, alice, bob):
        create_item(client, owner)
    assert client.delete(f"/users/{alice}").json() == {"ok": True}
    assert client.get(f"/users/{alice}").status_code == 404
    assert count_rows(Item, Item.owner_id == alice) == 0
    assert count_rows(Item) == 1
    assert client.delete(f"/users/{alice}").status_code == 404


def test_the_database_itself_cascades_a_user_delete(schema: Engine) -> None:
    """ON DELETE CASCADE in the schema, not only in the ORM: plain SQL deletes items too."""
    owner = add(User)
    add(Item, owner_id=owner)
    with schema.begin() as connection:
        connection.execute(delete(User).where(User.id == owner))
    assert count_rows(Item) == 0
