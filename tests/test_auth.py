"""Login (POST /token), bearer tokens and /users/me, with AUTH_ENABLED on; the open tutorial
contract with it off."""

import datetime as dt
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pydantic import SecretStr
from sqlalchemy import Engine, select

from app.auth.credentials import ALGORITHM, Passwords, Tokens
from app.config import Settings
from app.database import SessionLocal
from app.main import app, create_app
from app.models import User
from app.testing.plugin import bearer, with_auth
from containers import container
from tests.conftest import run_app
from tests.factories import PASSWORD, add, create_user, unique_email

BEARER = {"www-authenticate": "Bearer"}


def login(client: TestClient, email: str, password: str = PASSWORD) -> tuple[int, dict[str, str]]:
    response = client.post("/token", data={"username": email, "password": password})
    return response.status_code, response.json()


def secret_of(client: TestClient) -> str:
    settings: Settings = container.settings()
    assert settings.SECRET_KEY is not None
    return settings.SECRET_KEY.get_secret_value()


# Login


def test_login_returns_a_signed_token_naming_the_user(auth_client: TestClient) -> None:
    user = create_user(auth_client)
    status, body = login(auth_client, user["email"])
    assert status == 200
    assert set(body) == {"access_token", "token_type", "refresh_token", "expires_in"}
    assert body["token_type"] == "bearer"
    claims = jwt.decode(body["access_token"], secret_of(auth_client), algorithms=[ALGORITHM])
    assert claims["sub"] == str(user["id"])
    lifetime = claims["exp"] - claims["iat"]
    assert lifetime == 15 * 60
    assert int(body["expires_in"]) == lifetime
    assert abs(claims["iat"] - time.time()) < 60
    me = auth_client.get("/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json() == user


def test_login_accepts_what_swagger_ui_sends(auth_client: TestClient) -> None:
    email = create_user(auth_client)["email"]
    form = {
        "grant_type": "password",
        "username": email,
        "password": PASSWORD,
        "scope": "",
        "client_id": "",
        "client_secret": "",
    }
    assert auth_client.post("/token", data=form).status_code == 200
    assert auth_client.post("/token", data={**form, "grant_type": "code"}).status_code == 422


def test_login_is_a_form_not_json(auth_client: TestClient) -> None:
    email = create_user(auth_client)["email"]
    response = auth_client.post("/token", json={"username": email, "password": PASSWORD})
    assert response.status_code == 422


@pytest.mark.parametrize("who", ["wrong password", "unknown e-mail"])
def test_a_failed_login_is_401_and_does_not_say_why(auth_client: TestClient, who: str) -> None:
    email = create_user(auth_client)["email"]
    if who == "unknown e-mail":
        email = unique_email("nobody")
    response = auth_client.post("/token", data={"username": email, "password": "not it"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Incorrect username or password"}
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_username_with_nul_is_a_422_on_every_backend(auth_client: TestClient) -> None:
    response = auth_client.post("/token", data={"username": "a\x00@example.com", "password": "p"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "username"]


def test_an_inactive_user_with_the_right_password_is_400(auth_client: TestClient) -> None:
    email = unique_email()
    user_id = create_user(auth_client, email)["id"]
    with SessionLocal.begin() as session:
        session.get_one(User, user_id).is_active = False
    assert login(auth_client, email) == (400, {"detail": "Inactive user"})
    assert login(auth_client, email, "not it")[0] == 401  # no hint without the password


def test_an_outdated_hash_is_replaced_at_login(auth_client: TestClient) -> None:
    old = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=512, parallelism=1),))
    email = unique_email()
    user_id = add(User, email=email, hashed_password=old.hash(PASSWORD))
    assert login(auth_client, email)[0] == 200
    with SessionLocal() as session:
        stored = session.scalars(select(User.hashed_password).where(User.id == user_id)).one()
    assert stored != old.hash(PASSWORD)
    assert "m=512" not in stored
    assert container.password_hasher().verify(PASSWORD, stored)
    assert login(auth_client, email)[0] == 200


def test_an_unknown_e_mail_takes_as_long_as_a_wrong_password(
    schema: Engine, settings: Settings
) -> None:
    """With the production hasher (~50-100 ms), interleaved, compared by medians."""
    unthrottled = with_auth(settings).model_copy(update={"LOGIN_MAX_FAILURES": 100})
    with (
        container.password_hasher.override(PasswordHash.recommended()),
        container.settings.override(unthrottled),
        TestClient(create_app()) as client,
    ):
        email = create_user(client)["email"]
        times: dict[str, list[float]] = {"known": [], "unknown": []}
        for _ in range(6):
            for kind, username in (("known", email), ("unknown", unique_email("nobody"))):
                start = time.perf_counter()
                assert login(client, username, "not it")[0] == 401
                times[kind].append(time.perf_counter() - start)
    known, unknown = (statistics.median(times[k]) for k in ("known", "unknown"))
    print(f"\nlogin p50: known e-mail {known * 1000:.1f} ms, unknown {unknown * 1000:.1f} ms")
    assert 0.5 < unknown / known < 2, times


# Tokens


def forged(claims: dict[str, object], key: str = "another key, long enough: " + "x" * 32) -> str:
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def alg_none(user_id: int) -> str:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    exp = int(time.time()) + 600
    payload = jwt.utils.base64url_encode(f'{{"sub":"{user_id}","exp":{exp}}}'.encode()).decode()
    return f"{header}.{payload}."


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("missing", "Not authenticated"),
        ("not a jwt", "Could not validate credentials"),
        ("wrong scheme", "Not authenticated"),
        ("expired", "Token has expired"),
        ("wrongly signed", "Could not validate credentials"),
        ("alg none", "Could not validate credentials"),
        ("no sub", "Could not validate credentials"),
        ("deleted user", "Could not validate credentials"),
        ("inactive user", "Could not validate credentials"),
    ],
)
def test_a_request_without_a_valid_token_is_401(
    auth_client: TestClient, case: str, detail: str
) -> None:
    user_id = add(User)
    tokens: Tokens = container.tokens()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    header = {
        "missing": {},
        "not a jwt": {"Authorization": "Bearer abc.def"},
        "wrong scheme": {"Authorization": f"Basic {tokens.issue(user_id)}"},
        "expired": {"Authorization": f"Bearer {tokens.issue(user_id, now=past)}"},
        "wrongly signed": {
            "Authorization": f"Bearer {forged({'sub': str(user_id), 'exp': 2**40})}"
        },
        "alg none": {"Authorization": f"Bearer {alg_none(user_id)}"},
        "no sub": {"Authorization": f"Bearer {forged({'exp': 2**40}, secret_of(auth_client))}"},
        "deleted user": bearer(user_id),
        "inactive user": bearer(user_id),
    }[case]
    with SessionLocal.begin() as session:
        user = session.get_one(User, user_id)
        if case == "deleted user":
            session.delete(user)
        if case == "inactive user":
            user.is_active = False
    for method, path in (("GET", "/users/me"), ("GET", "/items/"), ("GET", f"/users/{user_id}")):
        response = auth_client.request(method, path, headers=header)
        assert response.status_code == 401, (method, path)
        assert response.json() == {"detail": detail}
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_deleted_users_token_stops_working_and_their_id_is_not_reused(
    auth_client: TestClient,
) -> None:
    user = create_user(auth_client)
    headers = bearer(user["id"])
    assert auth_client.delete(f"/users/{user['id']}", headers=headers).json() == {"ok": True}
    assert auth_client.get("/users/me", headers=headers).status_code == 401
    newcomer = create_user(auth_client)
    assert newcomer["id"] > user["id"]
    assert auth_client.get("/users/me", headers=headers).status_code == 401


# The two modes


def test_users_me_is_the_tutorials_422_with_auth_off(client: TestClient) -> None:
    response = client.get("/users/me")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]
    assert client.post("/token", data={"username": "a", "password": "b"}).status_code == 404


def test_openapi_declares_the_bearer_scheme_only_with_auth_on(
    client: TestClient, auth_client: TestClient
) -> None:
    closed = auth_client.get("/openapi.json").json()
    scheme = closed["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["flows"]["password"]["tokenUrl"] == "token"
    assert closed["paths"]["/items/"]["get"]["security"] == [{"OAuth2PasswordBearer": []}]
    assert "401" in closed["paths"]["/items/"]["get"]["responses"]
    assert "/token" in closed["paths"]
    assert closed["paths"]["/users/"]["post"]["security"] == []  # signup stays open
    opened = client.get("/openapi.json").json()
    assert "securitySchemes" not in opened["components"]
    for operations in opened["paths"].values():
        for operation in operations.values():
            assert "security" not in operation
            assert not {"401", "403"} & set(operation["responses"])
    assert "/token" not in opened["paths"]


def test_an_app_started_with_other_auth_settings_than_it_was_created_with_refuses(
    schema: Engine, settings: Settings
) -> None:
    with (
        container.settings.override(with_auth(settings)),  # app.main.app was made with auth off
        pytest.raises(RuntimeError, match="create_app"),
        TestClient(app),
    ):
        pass


# SECRET_KEY


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "is required"),
        ("Zk3-short-but-random", "too short"),
        ("changethis" * 4, "placeholder"),
        ("my-super-secret-key-for-production-1234", "placeholder"),
        ("a" * 40, "placeholder"),
    ],
)
def test_a_weak_secret_key_stops_the_service_naming_it_without_showing_it(
    tmp_path: Path, key: str, reason: str
) -> None:
    env = {"AUTH_ENABLED": "true", "SECRET_KEY": key, "DATABASE_URL": f"sqlite:///{tmp_path}/a.db"}
    with pytest.raises(ValueError, match=reason) as error:
        Settings(AUTH_ENABLED=True, SECRET_KEY=key)
    assert "SECRET_KEY" in str(error.value)
    result = run_app("init-db", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "SECRET_KEY" in result.stderr
    assert reason in result.stderr
    if key:
        assert key not in result.stderr + result.stdout
        assert key not in str(error.value)


# Overrides made while the app serves


def test_overrides_made_after_the_first_request_reach_login_and_token_checks(
    auth_client: TestClient,
) -> None:
    user = create_user(auth_client)
    status, body = login(auth_client, user["email"])
    assert status == 200
    issued = {"Authorization": f"Bearer {body['access_token']}"}
    assert auth_client.get("/users/me", headers=issued).status_code == 200
    other_key = Tokens(SecretStr(secrets.token_urlsafe(32)), 30)
    with container.tokens.override(providers.Object(other_key)):
        assert auth_client.get("/users/me", headers=issued).status_code == 401
        mine = {"Authorization": f"Bearer {other_key.issue(user['id'])}"}
        assert auth_client.get("/users/me", headers=mine).status_code == 200
        status, body = login(auth_client, user["email"])
        assert other_key.user_id(body["access_token"]) == user["id"]
    assert auth_client.get("/users/me", headers=issued).status_code == 200
    assert auth_client.get("/users/me", headers=mine).status_code == 401


def test_a_passwords_override_after_the_first_login_reaches_the_next_one(
    auth_client: TestClient,
) -> None:
    email = create_user(auth_client)["email"]
    assert login(auth_client, email)[0] == 200

    class RefuseAll(Passwords):
        async def verify(self, password: Any, hashed: str | None) -> tuple[bool, str | None]:
            return False, None

    with container.passwords.override(providers.Factory(RefuseAll, container.password_hasher)):
        assert login(auth_client, email)[0] == 401
    assert login(auth_client, email)[0] == 200
