"""Who may do what: every operation x {no token, bad token, expired token, other user, owner},
with AUTH_ENABLED off and on. The policy is read off each route's dependencies (``Public``,
``Caller``, ``Owner``; none: a token), the rows and ids off ``Base.metadata``; the behaviour
must match the policy. A router dropped into ``app.routers`` is mounted, and denies by default.
"""

import datetime as dt
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine

from app import routers
from app.auth.credentials import Tokens
from app.config import Settings
from app.database import Base
from app.main import create_app
from app.models import User
from app.testing import routes
from app.testing.plugin import count_rows, with_auth
from containers import container
from tests.factories import PASSWORD, add, id_name, seed_ids, unique_email

pytestmark = (
    pytest.mark.any_backend
)  # the policy is the routes'; the rows it reads are the same SQL on every backend

IDENTITIES = ("no token", "bad token", "expired token", "other user", "owner")


def expected_status(auth: bool, policy: routes.Access, identity: str) -> int:
    if not auth or policy == "public" or identity == "owner":
        return 200
    if identity in ("no token", "bad token", "expired token"):
        return 401
    return 200 if policy == "authenticated" else 403


def headers_for(identity: str, owner: int, other: int, auth: bool) -> dict[str, str]:
    # With auth off the app ignores tokens: any key makes them.
    tokens: Tokens = container.tokens() if auth else Tokens(SecretStr("k" * 32), 30)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    token = {
        "no token": None,
        "bad token": "not.a.token",
        "expired token": tokens.issue(owner, now=past),
        "other user": tokens.issue(other),
        "owner": tokens.issue(owner),
    }[identity]
    return {"Authorization": f"Bearer {token}"} if token else {}


def operations(app: FastAPI) -> dict[tuple[str, str], routes.Access]:
    """(path template, method) -> access policy, for every operation of ``app``."""
    return {
        (str(r.path), method): routes.access(r)
        for r in routes.api_routes(app)
        for method in r.methods or ()
    }


@pytest.fixture(params=[False, True], ids=["auth-off", "auth-on"])
def served(
    request: pytest.FixtureRequest, schema: Engine, settings: Settings
) -> Iterator[tuple[FastAPI, TestClient, bool]]:
    auth: bool = request.param
    with container.settings.override(with_auth(settings) if auth else settings):
        app = create_app()
        with TestClient(app) as client:
            yield app, client, auth


def test_every_operation_answers_every_caller_as_its_policy_says(
    served: tuple[FastAPI, TestClient, bool],
) -> None:
    app, client, auth = served
    policies = operations(app)
    outcomes: list[tuple[str, str, str, int, int]] = []
    for identity in IDENTITIES:
        for template, method in sorted(policies):
            owner_email = unique_email("owner")
            hashed = container.password_hasher().hash(PASSWORD)
            owner = add(User, email=owner_email, hashed_password=hashed)
            other = add(User)
            ids = seed_ids(**{id_name(User): owner})  # a row of every table, owned by owner
            [request] = [
                r
                for r in routes.example_requests(app, ids)
                if (r.template, r.method) == (template, method)
            ]
            body = request.body
            if body is not None and "email" in body:
                body["email"] = unique_email("new")
            if body is not None and "username" in body:
                body.update(username=owner_email, password=PASSWORD)
            if body is not None and "current_password" in body:
                body["current_password"] = PASSWORD
            before = row_counts()
            response = request.send(client, headers=headers_for(identity, owner, other, auth))
            want = expected_status(auth, policies[template, method], identity)
            outcomes.append((method, template, identity, response.status_code, want))
            if want == 401:
                assert response.headers["www-authenticate"] == "Bearer"
            if want == 403:
                assert response.json() == {"detail": "Not enough permissions"}
            if want != 200:  # a refused request changes nothing
                assert row_counts() == before
    wrong = [o for o in outcomes if o[3] != o[4]]
    assert wrong == [], "\n".join(
        f"{m} {t} as {i}: {got}, want {want}" for m, t, i, got, want in wrong
    )
    assert len(outcomes) == len(IDENTITIES) * len(policies)
    assert set(policies.values()) == {"public", "authenticated", "owner"}


def row_counts() -> dict[str, int]:
    return {m.class_.__tablename__: count_rows(m.class_) for m in Base.registry.mappers}


DROPPED = """
from fastapi import APIRouter

from app.routers.paging import Id

router = APIRouter(prefix="/dropped")


@router.get("/{thing_id}")
async def read_thing(thing_id: ID_TYPE) -> dict[str, int]:
    \"\"\"A route that says nothing about who may call it.\"\"\"
    return {"id": thing_id}
"""


@pytest.fixture
def drop_router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Puts a module ``dropped`` into the ``app.routers`` package (from a folder added to
    its ``__path__``, as a file beside the others would be), found by the real discovery."""

    def drop(id_type: str) -> None:
        (tmp_path / "dropped.py").write_text(DROPPED.replace("ID_TYPE", id_type))
        monkeypatch.setattr(routers, "__path__", [*routers.__path__, str(tmp_path)])

    yield drop
    sys.modules.pop("app.routers.dropped", None)
    vars(routers).pop("dropped", None)


def test_a_router_dropped_into_the_package_needs_a_token_with_auth_on(
    drop_router: Callable[[str], None], schema: Engine, settings: Settings
) -> None:
    drop_router("Id")
    with container.settings.override(with_auth(settings)), TestClient(create_app()) as client:
        refused = client.get("/dropped/1")
        token = container.tokens().issue(add(User))
        allowed = client.get("/dropped/1", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert allowed.json() == {"id": 1}
    with TestClient(create_app()) as client:  # auth off: open, as every route is
        assert client.get("/dropped/1").json() == {"id": 1}


def test_a_router_with_an_unbounded_id_is_refused_at_startup(
    drop_router: Callable[[str], None],
) -> None:
    drop_router("int")
    with pytest.raises(TypeError, match=r"/dropped/\{thing_id\}: .*app.routers.paging.Id"):
        create_app()


def test_a_huge_id_is_a_422_on_every_route(served: tuple[FastAPI, TestClient, bool]) -> None:
    app, client, auth = served
    user = add(User)
    headers = {"Authorization": f"Bearer {container.tokens().issue(user)}"} if auth else {}
    for request in routes.example_requests(app, 2**70):
        if "{" in request.template:
            response = request.send(client, headers=headers)
            assert response.status_code == 422, (request.method, request.template)
