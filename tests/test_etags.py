"""ETags and If-Match: no lost updates, also when eight clients race with the same ETag."""

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.exceptions import PreconditionFailedError
from app.models import Item
from app.testing.plugin import count_rows
from app.testing.server import LiveServer
from app.web.etags import check_if_match, etag
from tests.factories import add, create_item, create_user
from tests.load import Connection

RACERS = 8


@pytest.mark.parametrize("if_match", [None, "*", '"3"', '"1", "3"', ' "2" , "3" '])
def test_if_match_passes_for_the_current_version(if_match: str | None) -> None:
    check_if_match(if_match, 3)


@pytest.mark.parametrize("if_match", ['"2"', "3", 'W/"3"', '"03"', "", "garbage", '"3'])
def test_if_match_refuses_anything_else_and_names_the_current_tag(if_match: str) -> None:
    with pytest.raises(PreconditionFailedError, match='"3"'):
        check_if_match(if_match, 3)
    assert etag(3) == '"3"'


def test_a_stale_if_match_is_412_and_changes_nothing(client: TestClient) -> None:
    owner = create_user(client)["id"]
    item = create_item(client, owner, title="Pen")
    path = f"/items/{item['id']}"
    first = client.patch(path, json={"title": "Cap"}, headers={"If-Match": '"1"'})
    assert (first.status_code, first.headers["etag"]) == (200, '"2"')
    stale = client.patch(path, json={"title": "Ink"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json() == {"detail": "The resource has changed since it was read; fetch it again"}
    assert stale.headers["etag"] == '"2"'
    assert client.get(path).json()["title"] == "Cap"
    assert client.delete(path, headers={"If-Match": '"1"'}).status_code == 412
    assert client.delete(path, headers={"If-Match": 'W/"2"'}).status_code == 412
    assert client.get(path).status_code == 200
    assert client.delete(path, headers={"If-Match": '"2"'}).json() == {"ok": True}


def test_users_have_etags_too(client: TestClient) -> None:
    user = create_user(client)
    path = f"/users/{user['id']}"
    assert client.get(path).headers["etag"] == '"1"'
    assert (
        client.patch(path, json={"is_active": False}, headers={"If-Match": '"1"'}).status_code
        == 200
    )
    assert (
        client.patch(path, json={"is_active": True}, headers={"If-Match": '"1"'}).status_code == 412
    )
    assert client.delete(path, headers={"If-Match": '"1"'}).status_code == 412
    assert client.get(path).json()["is_active"] is False
    assert client.delete(path, headers={"If-Match": "*"}).json() == {"ok": True}


@pytest.fixture
def server(database_url: str, schema: Engine) -> Iterator[LiveServer]:
    schema.dispose()
    with LiveServer({"DATABASE_URL": database_url}, workers=2) as live:
        yield live


async def race(server: LiveServer, method: str, path: str, headers: dict[str, str]) -> Counter[int]:
    """``RACERS`` clients send the same request at the same moment, on open connections."""
    connections = [Connection(server.url, timeout=30) for _ in range(RACERS)]
    try:
        await asyncio.gather(*(c.request("GET", "/health") for c in connections))
        responses = await asyncio.gather(
            *(
                c.request(
                    method, path, {"title": f"mine {n}"} if method == "PATCH" else None, headers
                )
                for n, c in enumerate(connections)
            )
        )
    finally:
        for connection in connections:
            connection.close()
    return Counter(response.status for response in responses)


async def test_eight_patches_with_the_same_if_match_one_wins(server: LiveServer) -> None:
    item = add(Item)
    assert await race(server, "PATCH", f"/items/{item}", {"If-Match": '"1"'}) == {
        200: 1,
        412: RACERS - 1,
    }
    with Connection(server.url, timeout=10) as connection:
        final = await connection.request("GET", f"/items/{item}")
    assert final.headers["etag"] == '"2"'


async def test_eight_deletes_with_the_same_if_match_one_wins(server: LiveServer) -> None:
    item = add(Item)
    outcome = await race(server, "DELETE", f"/items/{item}", {"If-Match": '"1"'})
    # The winner deletes it; the others find it changed (412) or already gone (404).
    assert outcome[200] == 1
    assert outcome[200] + outcome[412] + outcome[404] == RACERS
    assert count_rows(Item) == 0


async def test_eight_patches_without_if_match_all_apply(server: LiveServer) -> None:
    item = add(Item)
    assert await race(server, "PATCH", f"/items/{item}", {}) == {200: RACERS}
    with Connection(server.url, timeout=10) as connection:
        final = await connection.request("GET", f"/items/{item}")
    assert final.headers["etag"] == f'"{1 + RACERS}"'  # each one applied, none lost
