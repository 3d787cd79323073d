"""Identity that holds (issue 21), through real HTTP with AUTH_ENABLED on: one account per
e-mail, credential changes that need the current password and end every session, refresh
tokens that rotate and give a reuse away across workers, logout, tokens that never cause a
500, 422s that never echo a secret, no redirect built from the Host header, HEAD and 304,
and a /metrics that is not public."""

import datetime as dt
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.auth.credentials import ALGORITHM
from app.testing.server import LiveServer
from tests.factories import PASSWORD, unique_email

WORKERS = 2
LIGHT_APP = "tests.light_app:app"
NEW_PASSWORD = "a n3w and l0nger passphrase"


@contextmanager
def serve(
    database_url: str, schema: Engine | None, env: dict[str, str] | None = None, workers: int = 1
) -> Iterator[tuple[httpx2.Client, str]]:
    """A live server with auth on and a client; the SECRET_KEY. Without ``schema``, the
    server creates the tables."""
    if schema is not None:
        schema.dispose()
    key = secrets.token_urlsafe(32)
    settings = {"DATABASE_URL": database_url, "AUTH_ENABLED": "true", "SECRET_KEY": key}
    if schema is None:
        settings["CREATE_SCHEMA"] = "true"
    with (
        # Password hashing at the test-sized cost: these tests are about sessions, not it.
        LiveServer({**settings, **(env or {})}, workers=workers, app=LIGHT_APP) as server,
        # A new connection per request (no keep-alive): either worker may take each one.
        httpx2.Client(
            base_url=server.url, limits=httpx2.Limits(max_keepalive_connections=0), timeout=60
        ) as client,
    ):
        yield client, key


# The servers below are shared by the tests of this module (each signs up users of its own),
# with no per-address login limit: test_throttle.py tests that one.
SHARED = {"LOGIN_MAX_ATTEMPTS_PER_MINUTE": "100000"}


@pytest.fixture(scope="module")
def live(module_database_url: str) -> Iterator[httpx2.Client]:
    with serve(module_database_url, None, SHARED) as (client, _):
        yield client


@pytest.fixture(scope="module")
def workers(module_database_url: str) -> Iterator[httpx2.Client]:
    """Two workers: sessions and refresh tokens must hold whichever serves each request."""
    with serve(module_database_url, None, SHARED, workers=WORKERS) as (client, _):
        yield client


def sign_up(client: httpx2.Client, email: str | None = None) -> dict[str, Any]:
    response = client.post("/users/", json={"email": email or unique_email(), "password": PASSWORD})
    assert response.status_code == 200, response.text
    user: dict[str, Any] = response.json()
    return user


def log_in(client: httpx2.Client, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def refresh(client: httpx2.Client, token: str) -> httpx2.Response:
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": token})


def auth(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def me(client: httpx2.Client, tokens: dict[str, Any]) -> int:
    return client.get("/users/me", headers=auth(tokens)).status_code


# One e-mail, one account


def test_an_e_mail_is_one_account_whatever_its_case_and_spaces(live: httpx2.Client) -> None:
    user = sign_up(live, "Dave@Example.COM")
    assert user["email"] == "Dave@example.com"  # as typed; the domain lower-cased
    for spelling in ("dave@example.com", " DAVE@example.com ", "dAvE@EXAMPLE.com"):
        taken = live.post("/users/", json={"email": spelling, "password": PASSWORD})
        assert taken.status_code == 400
        assert taken.json() == {"detail": "Email already registered"}
    for typed in ("Dave@Example.COM", "dave@example.com", "  DAVE@EXAMPLE.COM  "):
        assert me(live, log_in(live, typed)) == 200
    other = sign_up(live)
    change = {"email": "DAVE@example.com", "current_password": PASSWORD}
    taken = live.patch(
        f"/users/{other['id']}", json=change, headers=auth(log_in(live, other["email"]))
    )
    assert taken.status_code == 400
    assert taken.json() == {"detail": "Email already registered"}


# Credential changes


def test_changing_password_or_e_mail_needs_the_current_password(live: httpx2.Client) -> None:
    user = sign_up(live)
    tokens = log_in(live, user["email"])
    path = f"/users/{user['id']}"
    for change in ({"password": NEW_PASSWORD}, {"email": unique_email()}):
        missing = live.patch(path, json=change, headers=auth(tokens))
        assert missing.status_code == 400
        assert "current_password" in missing.json()["detail"]
        wrong = live.patch(path, json={**change, "current_password": "nope"}, headers=auth(tokens))
        assert wrong.status_code == 400
        assert "current_password" in wrong.json()["detail"]
    new_email = unique_email()
    changed = live.patch(
        path, json={"email": new_email, "current_password": PASSWORD}, headers=auth(tokens)
    )
    assert changed.status_code == 200
    assert changed.json()["email"] == new_email
    assert me(live, tokens) == 200  # an e-mail change ends no session
    assert me(live, log_in(live, new_email)) == 200


def test_wrong_current_passwords_count_toward_the_login_throttle(
    database_url: str, schema: Engine
) -> None:
    with serve(database_url, schema, {"LOGIN_MAX_FAILURES": "2"}) as (client, _):
        user = sign_up(client)
        tokens = log_in(client, user["email"])
        change = {"password": NEW_PASSWORD, "current_password": "wrong"}
        path = f"/users/{user['id']}"
        statuses = [
            client.patch(path, json=change, headers=auth(tokens)).status_code for _ in range(3)
        ]
        assert statuses == [400, 400, 429]
        refused = client.post("/token", data={"username": user["email"], "password": PASSWORD})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0


@pytest.mark.parametrize("ending", ["password change", "deactivation", "deletion"])
def test_every_session_ends_with_a_password_change_deactivation_or_deletion(
    workers: httpx2.Client, ending: str
) -> None:
    live = workers
    user = sign_up(live)
    bystander = sign_up(live)
    sessions = [log_in(live, user["email"]) for _ in range(2)]
    renewed = refresh(live, sessions[1]["refresh_token"]).json()  # a rotated one too
    sessions.append(renewed)
    theirs = log_in(live, bystander["email"])
    path = f"/users/{user['id']}"
    if ending == "password change":
        body = {"password": NEW_PASSWORD, "current_password": PASSWORD}
        assert live.patch(path, json=body, headers=auth(sessions[0])).status_code == 200
    elif ending == "deactivation":
        assert (
            live.patch(path, json={"is_active": False}, headers=auth(sessions[0])).status_code
            == 200
        )
    else:
        assert live.delete(path, headers=auth(sessions[0])).status_code == 200
    for tokens in sessions:
        assert me(live, tokens) == 401
        gone = refresh(live, tokens["refresh_token"])
        assert gone.status_code == 401
        assert gone.headers["www-authenticate"] == "Bearer"
    assert me(live, theirs) == 200
    assert refresh(live, theirs["refresh_token"]).status_code == 200
    if ending == "password change":
        assert (
            live.post("/token", data={"username": user["email"], "password": PASSWORD}).status_code
            == 401
        )
        assert me(live, log_in(live, user["email"], NEW_PASSWORD)) == 200


# Refresh tokens and logout


def test_refresh_rotates_and_a_reused_token_ends_its_session_across_workers(
    workers: httpx2.Client,
) -> None:
    live = workers
    user = sign_up(live)
    first = log_in(live, user["email"])
    assert set(first) == {"access_token", "token_type", "refresh_token", "expires_in"}
    chain = [first]
    for _ in range(6):  # each on a new connection: both workers take part
        response = refresh(live, chain[-1]["refresh_token"])
        assert response.status_code == 200, response.text
        chain.append(response.json())
        assert me(live, chain[-1]) == 200
    assert len({tokens["refresh_token"] for tokens in chain}) == len(chain)
    other_session = log_in(live, user["email"])

    reused = refresh(live, chain[2]["refresh_token"])  # retired: a copy is in other hands
    assert reused.status_code == 401
    assert reused.headers["www-authenticate"] == "Bearer"
    newest = chain[-1]
    assert refresh(live, newest["refresh_token"]).status_code == 401  # the family ended
    assert me(live, newest) == 401
    assert me(live, other_session) == 200  # another login of the same user goes on
    assert refresh(live, "not a refresh token").status_code == 401


def test_logout_ends_that_session_only(workers: httpx2.Client) -> None:
    live = workers
    user = sign_up(live)
    leaving, staying = log_in(live, user["email"]), log_in(live, user["email"])
    assert live.post("/logout").status_code == 401
    response = live.post("/logout", headers=auth(leaving))
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert me(live, leaving) == 401
    assert refresh(live, leaving["refresh_token"]).status_code == 401
    assert me(live, staying) == 200
    assert refresh(live, staying["refresh_token"]).status_code == 200


# Tokens never cause a 500


def odd_tokens(key: str, user_id: int) -> dict[str, str]:
    exp = int((dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).timestamp())

    def signed(claims: dict[str, Any], with_key: str = key) -> str:
        return jwt.encode({"exp": exp, **claims}, with_key, algorithm=ALGORITHM)

    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(
        f'{{"sub":"{user_id}","ver":1,"exp":{exp}}}'.encode()
    ).decode()
    return {
        "sub 2**63": signed({"sub": str(2**63), "ver": 1}),
        "sub 2**64": signed({"sub": str(2**64), "ver": 1}),
        "sub huge": signed({"sub": "9" * 400, "ver": 1}),
        "sub 0": signed({"sub": "0", "ver": 1}),
        "sub negative": signed({"sub": "-1", "ver": 1}),
        "sub string": signed({"sub": "alice", "ver": 1}),
        "sub unicode digits": signed({"sub": "١٢", "ver": 1}),
        "sub int": signed({"sub": user_id, "ver": 1}),
        "sub float": signed({"sub": "1.0", "ver": 1}),
        "sub missing": signed({"ver": 1}),
        "ver missing": signed({"sub": str(user_id)}),
        "ver string": signed({"sub": str(user_id), "ver": "1"}),
        "ver bool": signed({"sub": str(user_id), "ver": True}),
        "ver 2**63": signed({"sub": str(user_id), "ver": 2**63}),
        "sid 2**63": signed({"sub": str(user_id), "ver": 1, "sid": 2**63}),
        "sid string": signed({"sub": str(user_id), "ver": 1, "sid": "1"}),
        "exp string": jwt.encode({"sub": str(user_id), "ver": 1, "exp": "x"}, key, ALGORITHM),
        "alg none": f"{header}.{payload}.",
        "another key": signed({"sub": str(user_id), "ver": 1}, "another key " + "k" * 40),
        "garbage": "a.b.c",
    }


def test_no_token_causes_a_500(database_url: str, schema: Engine) -> None:
    with serve(database_url, schema) as (client, key):
        user = sign_up(client)
        for case, token in odd_tokens(key, user["id"]).items():
            for path in ("/users/me", f"/users/{user['id']}", "/items/"):
                response = client.get(path, headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 401, (case, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
            logout = client.post("/logout", headers={"Authorization": f"Bearer {token}"})
            assert logout.status_code == 401, case


# No secret in any 422


BODIES = {
    "form": ("application/x-www-form-urlencoded", "email=a%40example.com&password={secret}"),
    "text/plain": ("text/plain", '{{"email": "a@example.com", "password": "{secret}"}}'),
    "malformed JSON": ("application/json", '{{"email": "a@x", "password": "{secret}",'),
    "duplicate keys": ("application/json", '{{"password": "{secret}", "password": 5}}'),
    "bad e-mail": ("application/json", '{{"email": "nope", "password": "{secret}"}}'),
    "no JSON type": ("", '{{"email": "a@example.com", "password": "{secret}"}}'),
}


@pytest.mark.any_backend  # refused before any query
@pytest.mark.parametrize("auth_enabled", [False, True], ids=["auth-off", "auth-on"])
def test_no_422_echoes_a_password_whatever_the_content_type(
    database_url: str, schema: Engine, auth_enabled: bool
) -> None:
    secret = "hunter2-" + secrets.token_hex(8)
    env = {} if auth_enabled else {"AUTH_ENABLED": "false"}
    with serve(database_url, schema, env) as (client, _):
        user = sign_up(client)
        headers = auth(log_in(client, user["email"])) if auth_enabled else {}
        for case, (content_type, template) in BODIES.items():
            body = template.format(secret=secret)
            sent = {**headers, "Content-Type": content_type} if content_type else headers
            for method, path in (("POST", "/users/"), ("PATCH", f"/users/{user['id']}")):
                response = client.request(method, path, content=body, headers=sent)
                assert response.status_code == 422, (case, method, response.text)
                assert secret not in response.text, (case, method)
                assert "hunter2" not in response.text, (case, method)
            for field in ("password", "current_password"):
                response = client.patch(
                    f"/users/{user['id']}", json={field: [secret]}, headers=headers
                )
                assert response.status_code == 422
                assert secret not in response.text


# No redirect built from the Host header


def test_users_without_the_slash_never_redirects_to_the_host_header(live: httpx2.Client) -> None:
    body = {"email": unique_email(), "password": PASSWORD}
    response = live.post(
        "/users", json=body, headers={"Host": "evil.example"}, follow_redirects=False
    )
    location = response.headers.get("location", "")
    assert response.status_code in (200, 307, 308)
    assert "evil.example" not in location
    assert not location.startswith(("http:", "https:", "//"))
    if response.status_code != 200:
        assert location == "/users/"
    assert (
        live.get("/users/1/", headers={"Host": "evil.example"}, follow_redirects=False).headers.get(
            "location"
        )
        == "/users/1"
    )


# HEAD and conditional GET


def test_every_get_route_answers_head_with_its_headers_and_no_body(live: httpx2.Client) -> None:
    user = sign_up(live)
    headers = auth(log_in(live, user["email"]))
    item = live.post(f"/users/{user['id']}/items/", json={"title": "pen"}, headers=headers).json()
    ids = {"user_id": user["id"], "item_id": item["id"]}
    operations = live.get("/openapi.json").json()["paths"]
    paths = {path.format(**ids) for path, methods in operations.items() if "get" in methods}
    paths |= {"/openapi.json", "/docs", "/redoc"}
    assert paths >= {"/users/", "/users/me", f"/users/{user['id']}", "/items/", "/health"}
    for path in sorted(paths):
        got = live.get(path, headers=headers)
        head = live.head(path, headers=headers)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        for name in ("content-type", "content-length", "etag"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
    assert live.head("/token").status_code == 405
    assert "HEAD" in live.request("DELETE", "/users/").headers["allow"]


def test_a_users_etag_follows_their_items_and_if_none_match_answers_304(
    live: httpx2.Client,
) -> None:
    user = sign_up(live)
    headers = auth(log_in(live, user["email"]))
    path = f"/users/{user['id']}"

    def etag() -> str:
        response = live.get(path, headers=headers)
        assert response.status_code == 200
        return response.headers["etag"]

    tags = [etag()]
    item = live.post(f"{path}/items/", json={"title": "pen"}, headers=headers).json()
    tags.append(etag())
    live.patch(f"/items/{item['id']}", json={"title": "pencil"}, headers=headers)
    tags.append(etag())
    live.post(f"{path}/items/", json={"title": "ink"}, headers=headers)
    tags.append(etag())
    live.delete(f"/items/{item['id']}", headers=headers)
    tags.append(etag())
    assert len(set(tags)) == len(tags), tags

    current = tags[-1]
    for if_none_match in (current, f"W/{current}", f'"nope", {current}', "*"):
        not_modified = live.get(path, headers={**headers, "If-None-Match": if_none_match})
        assert not_modified.status_code == 304, if_none_match
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == current
        assert (
            live.head(path, headers={**headers, "If-None-Match": if_none_match}).status_code == 304
        )
    assert live.get(path, headers={**headers, "If-None-Match": tags[0]}).status_code == 200
    stale = live.patch(path, json={"is_active": True}, headers={**headers, "If-Match": tags[0]})
    assert stale.status_code == 412
    assert stale.headers["etag"] == current
    fresh = live.patch(path, json={"is_active": True}, headers={**headers, "If-Match": current})
    assert fresh.status_code == 200


def test_openapi_declares_304_the_etag_and_the_request_id(auth_client: TestClient) -> None:
    schema = auth_client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response.get("headers", {}), (method, path, status)
            if method == "get":
                assert "304" in operation["responses"], path
                assert "If-None-Match" in {p["name"] for p in operation["parameters"]}
    assert "ETag" in schema["paths"]["/users/{user_id}"]["get"]["responses"]["200"]["headers"]
    assert "429" in schema["paths"]["/users/{user_id}"]["patch"]["responses"]
    assert "401" in schema["paths"]["/logout"]["post"]["responses"]


# /metrics is not public


@pytest.mark.any_backend  # /metrics' guard touches no database
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AUTH_ENABLED": "true"}, {"none": 404, "wrong": 404, "right": 404}),
        (
            {"AUTH_ENABLED": "true", "METRICS_TOKEN": "scrape-me"},
            {"none": 401, "wrong": 401, "right": 200},
        ),
        (
            {"AUTH_ENABLED": "false", "METRICS_TOKEN": "scrape-me"},
            {"none": 401, "wrong": 401, "right": 200},
        ),
        ({"AUTH_ENABLED": "false"}, {"none": 200, "wrong": 200, "right": 200}),
    ],
    ids=["auth-on", "auth-on-token", "auth-off-token", "auth-off"],
)
def test_metrics_need_the_metrics_token(
    database_url: str, schema: Engine, env: dict[str, str], expected: dict[str, int]
) -> None:
    with serve(database_url, schema, {"METRICS_ENABLED": "true", **env}) as (client, _):
        sent = {
            "none": {},
            "wrong": {"Authorization": "Bearer scrape-you"},
            "right": {"Authorization": "Bearer scrape-me"},
        }
        got = {case: client.get("/metrics", headers=h).status_code for case, h in sent.items()}
        assert got == expected
        if expected["none"] == 401:
            assert client.get("/metrics").headers["www-authenticate"] == "Bearer"
