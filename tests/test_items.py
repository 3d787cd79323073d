"""/users/{id}/items/ and /items/: the HTTP contract of DESIGN.md."""

from typing import Any

import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Item
from app.schemas import ItemRead
from app.services import ItemService
from app.testing.plugin import count_rows
from containers import container
from tests.factories import create_item, create_user

ITEM_KEYS = {"id", "title", "description", "owner_id"}


def test_create_item_returns_the_item(client: TestClient) -> None:
    owner = create_user(client, "alice@example.com")["id"]
    response = client.post(
        f"/users/{owner}/items/", json={"title": "Pen", "description": "Blue ink"}
    )
    assert response.status_code == 200
    item = response.json()
    assert set(item) == ITEM_KEYS
    assert isinstance(item["id"], int)
    assert item == {"id": item["id"], "title": "Pen", "description": "Blue ink", "owner_id": owner}
    assert client.get(f"/users/{owner}").json()["items"] == [item]


def test_description_is_optional(client: TestClient) -> None:
    owner = create_user(client, "alice@example.com")["id"]
    assert create_item(client, owner, title="Pen")["description"] is None
    assert create_item(client, owner, title="Cap", description=None)["description"] is None


def test_title_is_stripped_and_bounded(client: TestClient) -> None:
    owner = create_user(client, "alice@example.com")["id"]
    assert create_item(client, owner, title="  Pen \t")["title"] == "Pen"
    assert create_item(client, owner, title="x" * 200)["title"] == "x" * 200


@pytest.mark.parametrize("body", [{"title": "a\x00b"}, {"title": "Pen", "description": "\x00"}])
def test_text_with_nul_is_a_422_on_every_backend(client: TestClient, body: dict[str, str]) -> None:
    """PostgreSQL's text cannot hold NUL (a 500 there before), and SQLite would keep it."""
    owner = create_user(client)["id"]
    response = client.post(f"/users/{owner}/items/", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "string_pattern_mismatch"
    item = create_item(client, owner)
    assert client.patch(f"/items/{item['id']}", json=body).status_code == 422
    assert count_rows(Item) == 1


@pytest.mark.parametrize("user_id", [999, 0, -1, 2**31 - 1])
def test_create_item_for_a_missing_user_is_404(client: TestClient, user_id: int) -> None:
    create_user(client, "alice@example.com")["id"]
    response = client.post(f"/users/{user_id}/items/", json={"title": "Pen"})
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}
    assert count_rows(Item) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "   "},
        {"title": "\t\n"},
        {"title": "x" * 201},
        {"title": None},
        {"description": "no title"},
        {"title": "Pen", "description": "x" * 2001},
        {"title": ["Pen"]},
        {},
    ],
)
def test_invalid_item_bodies_are_422(client: TestClient, body: dict[str, Any]) -> None:
    owner = create_user(client, "alice@example.com")["id"]
    response = client.post(f"/users/{owner}/items/", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert count_rows(Item) == 0


@pytest.mark.parametrize("user_id", ["alice", str(-(2**31) - 1), str(2**31)])
def test_create_item_with_an_invalid_user_id_is_422(client: TestClient, user_id: str) -> None:
    response = client.post(f"/users/{user_id}/items/", json={"title": "Pen"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]
    assert count_rows(Item) == 0


def test_list_items_of_every_owner_in_creation_order(client: TestClient) -> None:
    alice, bob = (
        create_user(client, "alice@example.com")["id"],
        create_user(client, "bob@example.com")["id"],
    )
    created = [
        create_item(client, owner, title=f"item {n}") for n, owner in enumerate([alice, bob, alice])
    ]
    response = client.get("/items/")
    assert response.status_code == 200
    assert response.json() == created
    assert [i["owner_id"] for i in response.json()] == [alice, bob, alice]


def test_list_items_paginates_stably(client: TestClient) -> None:
    owner = create_user(client, "alice@example.com")["id"]
    ids = [create_item(client, owner, title=f"item {n}")["id"] for n in range(7)]
    assert ids == sorted(ids)
    pages = [
        [i["id"] for i in client.get("/items/", params={"skip": skip, "limit": 3}).json()]
        for skip in (0, 3, 6, 9)
    ]
    assert pages == [ids[0:3], ids[3:6], ids[6:7], []]
    assert [i["id"] for i in client.get("/items/").json()] == ids


def test_list_items_of_an_empty_database(client: TestClient) -> None:
    response = client.get("/items/")
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize(
    "query",
    ["skip=-1", "limit=0", "limit=1001", "limit=x", f"skip={2**63}", f"after_id={2**31}"],
)
def test_list_items_rejects_bad_bounds(client: TestClient, query: str) -> None:
    response = client.get(f"/items/?{query}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    ("query", "found"), [("limit=1000&skip=0", 1), ("after_id=0", 1), (f"after_id={2**31 - 1}", 0)]
)
def test_list_items_accepts_the_bounds(client: TestClient, query: str, found: int) -> None:
    owner = create_user(client, "alice@example.com")["id"]
    create_item(client, owner, title="Pen")
    response = client.get(f"/items/?{query}")
    assert response.status_code == 200
    assert len(response.json()) == found


# Fetch, change and delete one item


def test_get_item_sends_its_version_as_etag(client: TestClient) -> None:
    owner = create_user(client)["id"]
    item = create_item(client, owner, title="Pen", description="blue")
    response = client.get(f"/items/{item['id']}")
    assert response.status_code == 200
    assert response.json() == item
    assert response.headers["etag"] == '"1"'
    missing = client.get("/items/999999")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Item not found"})


def test_patch_changes_only_the_fields_sent(client: TestClient) -> None:
    owner = create_user(client)["id"]
    item = create_item(client, owner, title="Pen", description="blue")
    path = f"/items/{item['id']}"
    response = client.patch(path, json={"title": "  Fountain pen "})
    assert response.status_code == 200
    assert response.json() == {**item, "title": "Fountain pen"}
    assert response.headers["etag"] == '"2"'
    cleared = client.patch(path, json={"description": None})
    assert cleared.json() == {**item, "title": "Fountain pen", "description": None}
    assert cleared.headers["etag"] == '"3"'
    unchanged = client.patch(path, json={})
    assert unchanged.json() == cleared.json()
    assert unchanged.headers["etag"] == '"3"'  # nothing changed: no new version
    assert client.get(path).json() == cleared.json()


@pytest.mark.parametrize(
    "body",
    [{"title": None}, {"title": ""}, {"title": "   "}, {"title": "x" * 201}, {"description": 5}],
)
def test_patch_rejects_what_create_rejects_and_a_null_title(
    client: TestClient, body: dict[str, Any]
) -> None:
    owner = create_user(client)["id"]
    item = create_item(client, owner, title="Pen")
    response = client.patch(f"/items/{item['id']}", json=body)
    assert response.status_code == 422
    assert client.get(f"/items/{item['id']}").json() == item


def test_delete_item(client: TestClient) -> None:
    owner = create_user(client)["id"]
    item = create_item(client, owner)
    assert client.delete(f"/items/{item['id']}").json() == {"ok": True}
    assert client.get(f"/items/{item['id']}").status_code == 404
    assert client.delete(f"/items/{item['id']}").status_code == 404
    assert client.patch(f"/items/{item['id']}", json={"title": "t"}).status_code == 404
    assert client.get(f"/users/{owner}").json()["items"] == []


def test_keyset_pagination_follows_after_id(client: TestClient) -> None:
    owner = create_user(client)["id"]
    ids = [create_item(client, owner)["id"] for _ in range(7)]
    pages, after = [], 0
    while True:
        page = client.get("/items/", params={"after_id": after, "limit": 3}).json()
        if not page:
            break
        pages.append([item["id"] for item in page])
        after = page[-1]["id"]
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    skipped = client.get("/items/", params={"after_id": ids[1], "skip": 2, "limit": 2}).json()
    assert [item["id"] for item in skipped] == ids[4:6]
    assert client.get("/items/", params={"after_id": ids[-1]}).json() == []
    assert client.get("/items/", params={"after_id": -1}).status_code == 422


def test_users_have_keyset_pagination_too(client: TestClient) -> None:
    ids = [create_user(client)["id"] for _ in range(4)]
    page = client.get("/users/", params={"after_id": ids[1], "limit": 10}).json()
    assert [user["id"] for user in page] == ids[2:]


def test_a_service_override_after_the_first_request_reaches_the_endpoint(
    client: TestClient,
) -> None:
    owner = create_user(client)
    create_item(client, owner["id"], title="real")
    assert [i["title"] for i in client.get("/items/").json()] == ["real"]
    fake = ItemRead(id=7, title="fake", description=None, owner_id=owner["id"])

    class FakeItems(ItemService):
        def get_page(self, session: Session, **page: Any) -> list[ItemRead]:
            return [fake]

    with container.item_service.override(providers.Factory(FakeItems)):
        assert client.get("/items/").json() == [fake.model_dump()]
    assert [i["title"] for i in client.get("/items/").json()] == ["real"]
