"""Who may do what: every operation x {no token, bad token, expired token, other user, owner},
with AUTH_ENABLED off and on. The policy is read off each route's dependencies (``Owner``,
``Caller``) and must match the README's table; the behaviour must match the policy."""

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine

from app.auth.credentials import Tokens
from app.config import Settings
from app.main import create_app
from app.models import Item, User
from app.testing import routes
from app.testing.plugin import count_rows, with_auth
from containers import container
from tests.factories import PASSWORD, add_item, add_user, unique_email

IDENTITIES = ("no token", "bad token", "expired token", "other user", "owner")
README = Path(__file__).resolve().parent.parent / "README.md"


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
            owner = add_user(
                owner_email, hashed_password=container.password_hasher().hash(PASSWORD)
            )
            other = add_user()
            item = add_item(owner)
            [request] = [
                r
                for r in routes.example_requests(app, {"user_id": owner, "item_id": item})
                if (r.template, r.method) == (template, method)
            ]
            body = request.body
            if body is not None and "email" in body:
                body["email"] = unique_email("new")
            if body is not None and "username" in body:
                body.update(username=owner_email, password=PASSWORD)
            users, items = count_rows(User), count_rows(Item)
            response = request.send(client, headers=headers_for(identity, owner, other, auth))
            want = expected_status(auth, policies[template, method], identity)
            outcomes.append((method, template, identity, response.status_code, want))
            if want == 401:
                assert response.headers["www-authenticate"] == "Bearer"
            if want == 403:
                assert response.json() == {"detail": "Not enough permissions"}
            if want != 200:  # a refused request changes nothing
                assert (count_rows(User), count_rows(Item)) == (users, items)
    wrong = [o for o in outcomes if o[3] != o[4]]
    assert wrong == [], "\n".join(
        f"{m} {t} as {i}: {got}, want {want}" for m, t, i, got, want in wrong
    )
    assert len(outcomes) == len(IDENTITIES) * len(policies)
    assert set(policies.values()) == {"public", "authenticated", "owner"}


def readme_policy() -> dict[tuple[str, str], str]:
    """The README's policy table: ``| `METHOD /path` | policy |`` rows."""
    rows = re.findall(
        r"^\| `(GET|POST|PATCH|DELETE|PUT) ([^`]+)` \| (\w+) \|", README.read_text(), re.M
    )
    return {(path, method): policy for method, path, policy in rows}


def test_the_readme_policy_table_is_the_apps(settings: Settings) -> None:
    with container.settings.override(with_auth(settings)):
        app = create_app()
    assert readme_policy() == operations(app)
