"""422 answers keep FastAPI's shape, never contain a secret's value, and echo inputs short."""

import logging
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Header, Query
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, Secret, SecretBytes, SecretStr
from sqlalchemy import Engine

from app.config import Settings
from app.main import create_app
from app.schemas import LoginForm, UserCreate
from app.testing.plugin import with_auth
from app.web.redaction import MASK, MAX_ECHO, redacted, secret_names
from containers import container
from tests.factories import create_user

pytestmark = pytest.mark.any_backend  # what a 422 echoes is decided before any database work

SMALL = 4096
ERROR_KEYS = {"type", "loc", "msg", "input", "ctx"}


def assert_small_and_clean(text: str, secret: str) -> None:
    assert len(text.encode()) < SMALL, len(text)
    assert secret not in text
    assert secret[:8] not in text  # not even a run of it


def errors(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    assert detail
    for error in detail:
        assert {"type", "loc", "msg"} <= set(error) <= ERROR_KEYS
    return detail


def test_a_5_mb_password_is_refused_by_the_body_limit(client: TestClient) -> None:
    password = "x" * 5_000_000
    response = client.post("/users/", json={"email": "a@example.com", "password": password})
    assert response.status_code == 413
    assert_small_and_clean(response.text, password)


def test_a_5_mb_password_under_a_larger_limit_is_a_small_422(
    schema: Engine, settings: Settings
) -> None:
    larger = settings.model_copy(update={"MAX_BODY_BYTES": 8 * 1024 * 1024})
    password = "x" * 5_000_000
    with container.settings.override(larger), TestClient(create_app()) as client:
        response = client.post("/users/", json={"email": "a@example.com", "password": password})
    [error] = errors(response)
    assert_small_and_clean(response.text, password)
    assert error == {
        "type": "string_too_long",
        "loc": ["body", "password"],
        "msg": "String should have at most 1024 characters",
        "input": MASK,
        "ctx": {"max_length": 1024},
    }


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_500_kb_password_is_a_small_422_without_it(client: TestClient, method: str) -> None:
    password = "p4ss" * 125_000
    user_id = create_user(client)["id"]
    path = "/users/" if method == "POST" else f"/users/{user_id}"
    body = {"email": "b@example.com", "password": password}
    response = client.request(method, path, json=body)
    assert errors(response)[0]["input"] == MASK
    assert_small_and_clean(response.text, password)


def test_every_kind_of_password_error_is_masked(client: TestClient) -> None:
    for password in ("", 12345, None, ["hunter2-in-a-list"], {"nested": "hunter2-nested"}):
        response = client.post("/users/", json={"email": "c@example.com", "password": password})
        [error] = errors(response)
        assert error["loc"] == ["body", "password"]
        assert error["input"] == MASK
        assert "hunter2" not in response.text


def test_a_missing_field_shows_the_object_with_its_secrets_masked(client: TestClient) -> None:
    response = client.post("/users/", json={"email": "bad"})
    email, password = errors(response)
    assert (email["type"], email["loc"], email["input"]) == (
        "value_error",
        ["body", "email"],
        "bad",
    )
    assert password == {
        "type": "missing",
        "loc": ["body", "password"],
        "msg": "Field required",
        "input": {"email": "bad"},
    }
    response = client.post("/users/", json={"password": "hunter2-secret", "note": "n" * 500})
    [missing] = errors(response)
    assert missing["loc"] == ["body", "email"]
    assert missing["input"] == {"password": MASK, "note": "n" * MAX_ECHO + "..."}
    assert "hunter2" not in response.text


def test_other_inputs_are_echoed_cut_short(client: TestClient) -> None:
    user_id = create_user(client)["id"]
    title = "t" * 500_000
    response = client.post(f"/users/{user_id}/items/", json={"title": title})
    [error] = errors(response)
    assert error["type"] == "string_too_long"
    assert error["input"] == "t" * MAX_ECHO + "..."
    assert len(response.content) < SMALL
    huge = [{"k": "v" * 1000}] * 900
    response = client.post("/users/", json=huge)
    [error] = errors(response)
    assert len(error["input"]) == 20
    assert len(response.content) < SMALL


@pytest.mark.parametrize(("literal", "echo"), [("NaN", "nan"), ("-Infinity", "-inf")])
def test_non_finite_numbers_are_echoed_as_strings(
    client: TestClient, literal: str, echo: str
) -> None:
    body = f'{{"email": {literal}, "password": "pw"}}'.encode()
    response = client.post("/users/", content=body, headers={"Content-Type": "application/json"})
    [error] = errors(response)  # not a 500: a JSON answer cannot carry NaN
    assert (error["loc"], error["input"]) == (["body", "email"], echo)


def test_a_lone_surrogate_is_echoed_as_its_escape(client: TestClient) -> None:
    json = {"Content-Type": "application/json"}
    body = b'{"email": "\\ud800", "password": "pw", "\\udfff": [1]}'
    response = client.post("/users/", content=body, headers=json)
    [error] = errors(response)  # not a 500: a JSON answer is UTF-8, which has no surrogates
    assert (error["loc"], error["input"]) == (["body", "email"], "\\ud800")
    missing = client.post("/users/", content=b'{"\\udfff": 1}', headers=json)
    assert errors(missing)[0]["input"] == {"\\udfff": 1}


def test_an_answer_without_secrets_or_long_inputs_is_fastapis_own(client: TestClient) -> None:
    response = client.get("/users/", params={"limit": 0})
    assert response.json() == {
        "detail": [
            {
                "type": "greater_than_equal",
                "loc": ["query", "limit"],
                "msg": "Input should be greater than or equal to 1",
                "input": "0",
                "ctx": {"ge": 1},
            }
        ]
    }
    broken = client.post(
        "/users/", content=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    assert broken.json() == {
        "detail": [
            {
                "type": "json_invalid",
                "loc": ["body", 10],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": "Expecting value"},
            }
        ]
    }


def test_login_form_errors_mask_the_password(auth_client: TestClient) -> None:
    password = "f0rm-s3cret" * 40_000
    response = auth_client.post("/token", data={"password": password, "grant_type": "code"})
    assert {tuple(e["loc"]) for e in errors(response)} == {("body", "grant_type")}
    assert_small_and_clean(response.text, password)
    response = auth_client.post("/token", data={"password": password})  # no username
    [missing] = errors(response)
    assert missing["input"]["password"] == MASK
    assert_small_and_clean(response.text, password)
    response = auth_client.post(
        "/token", data={"grant_type": "refresh_token", "password": password}
    )
    [missing] = errors(response)
    assert missing["input"]["password"] == MASK
    assert_small_and_clean(response.text, password)


def test_no_log_line_and_no_repr_carries_a_password(
    schema: Engine, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    password = "l0gged-n3ver-" * 3
    caplog.set_level(logging.DEBUG)
    with container.settings.override(with_auth(settings)), TestClient(create_app()) as client:
        email = create_user(client, password=password)["email"]
        client.post("/users/", json={"email": email, "password": password})  # 400: taken
        client.post("/users/", json={"email": "bad", "password": password})  # 422
        client.post("/token", data={"username": email, "password": password + "?"})  # 401
        assert client.post("/token", data={"username": email, "password": password}).is_success
    assert password not in caplog.text
    assert password not in repr(UserCreate(email="d@example.com", password=password))
    assert password not in repr(LoginForm(username="d@example.com", password=password))


def test_openapi_shows_passwords_as_write_only_bounded_strings(client: TestClient) -> None:
    components = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("UserCreate", "UserUpdate"):
        password = components[name]["properties"]["password"]
        assert password == {
            "type": "string",
            "format": "password",
            "writeOnly": True,
            "minLength": 1,
            "maxLength": 1024,
            "title": "Password",
        }


# secret_names and redacted, on their own


class Inner(BaseModel):
    pin: SecretStr
    label: str


class Outer(BaseModel):
    inner: Inner | None = None
    inners: list[Inner] = []
    key: Annotated[SecretBytes, "meta"]
    token: Secret[int]
    outer: "Outer | None" = None


def _dependant_of(app: FastAPI) -> Any:
    [route] = [r for r in app.routes if isinstance(r, APIRoute)]
    return route.dependant


def test_secret_names_are_found_in_parameters_dependencies_and_nested_models() -> None:
    app = FastAPI()

    async def api_key(x_api_key: Annotated[SecretStr, Header()]) -> None: ...

    @app.post("/")
    async def endpoint(
        body: Outer,
        passphrase: Annotated[SecretStr | None, Query(alias="pass")] = None,
        _: Annotated[None, Depends(api_key)] = None,
    ) -> None: ...

    assert secret_names(_dependant_of(app)) == {"pin", "key", "token", "pass", "passphrase"} | {
        "x_api_key",
        "x-api-key",
    }


def test_redacted_bounds_everything_it_echoes() -> None:
    class Weird:
        def __repr__(self) -> str:
            return "w" * 1000

    error = {
        "type": "value_error",
        "loc": ("body", "k" * 500, 3),
        "msg": "m" * 1000,
        "input": {"pin": "1234", "deep": {"a": {"b": {"c": {"d": 1}}}}, "n": 10**200},
        "ctx": {"error": ValueError("e" * 500), "limit": 3, "secret": SecretStr("s")},
        "url": "https://errors.pydantic.dev",
    }
    [out] = redacted([error], {"pin"})
    assert set(out) == ERROR_KEYS
    assert out["loc"] == ["body", "k" * MAX_ECHO + "...", 3]
    assert out["msg"] == "m" * 300 + "..."
    assert out["input"]["pin"] == MASK
    assert out["input"]["deep"] == {"a": {"b": "{'c': {'d': 1}}"}}
    assert out["input"]["n"] == str(10**200)[:MAX_ECHO] + "..."
    assert out["ctx"] == {"error": "e" * MAX_ECHO + "...", "limit": 3, "secret": MASK}
    assert redacted([{"type": "t", "loc": ["pin"], "msg": "m", "input": Weird()}], set()) == [
        {"type": "t", "loc": ["pin"], "msg": "m", "input": "w" * MAX_ECHO + "..."}
    ]
    assert redacted([{"type": "t", "loc": ["pin"], "msg": "m", "input": 5}], {"pin"}) == [
        {"type": "t", "loc": ["pin"], "msg": "m", "input": MASK}
    ]
