"""CORS_ORIGINS: preflights from a listed origin pass, others are refused; none by default."""

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.middleware.cors import CORSMiddleware

from app.config import Settings
from app.main import app, create_app
from containers import container

pytestmark = pytest.mark.any_backend  # CORS headers are decided before any database work

ALLOWED = "https://app.example.com"
REFUSED = "https://evil.example.net"
PREFLIGHT = {
    "Access-Control-Request-Method": "PATCH",
    "Access-Control-Request-Headers": "authorization, content-type, if-match",
}


def cors_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.fixture
def cors_client(schema: Engine, settings: Settings) -> Iterator[TestClient]:
    listed = settings.model_copy(update={"CORS_ORIGINS": [ALLOWED, "http://localhost:3000"]})
    with container.settings.override(listed), TestClient(create_app()) as client:
        yield client


def test_by_default_there_are_no_cors_headers(client: TestClient) -> None:
    assert CORSMiddleware not in [cast(object, m.cls) for m in app.user_middleware]
    preflight = client.options("/users/1", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert preflight.status_code == 405
    assert cors_headers(preflight) == {}
    response = client.get("/users/", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert cors_headers(response) == {}


def test_a_preflight_from_a_listed_origin_is_allowed(cors_client: TestClient) -> None:
    response = cors_client.options("/users/1", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert response.status_code == 200
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == ALLOWED
    assert set(headers["access-control-allow-methods"].split(", ")) == {
        "GET",
        "POST",
        "PATCH",
        "DELETE",
    }
    allowed = {h.lower() for h in headers["access-control-allow-headers"].split(", ")}
    assert {"authorization", "content-type", "if-match"} <= allowed
    assert "access-control-allow-credentials" not in headers


def test_a_preflight_from_another_origin_is_refused(cors_client: TestClient) -> None:
    response = cors_client.options("/users/1", headers={"Origin": REFUSED, **PREFLIGHT})
    assert response.status_code == 400
    assert "access-control-allow-origin" not in cors_headers(response)
    unlisted = {**PREFLIGHT, "Access-Control-Request-Headers": "x-unlisted"}
    assert cors_client.options("/users/1", headers={"Origin": ALLOWED, **unlisted}).is_client_error


def test_responses_to_a_listed_origin_expose_the_etag(cors_client: TestClient) -> None:
    created = cors_client.post(
        "/users/", json={"email": "cors@example.com", "password": "pw"}, headers={"Origin": ALLOWED}
    )
    assert created.headers["access-control-allow-origin"] == ALLOWED
    response = cors_client.get(f"/users/{created.json()['id']}", headers={"Origin": ALLOWED})
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == ALLOWED
    assert {"etag", "retry-after"} <= set(
        headers["access-control-expose-headers"].lower().split(", ")
    )
    other = cors_client.get("/users/", headers={"Origin": REFUSED})
    assert other.status_code == 200  # the browser, not the server, keeps it from the page
    assert "access-control-allow-origin" not in cors_headers(other)


def test_refusals_carry_cors_headers_too(cors_client: TestClient) -> None:
    response = cors_client.post(
        "/users/", content=b"x" * (2 * 1024 * 1024), headers={"Origin": ALLOWED}
    )
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == ALLOWED


def test_cors_origins_come_comma_separated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORS_ORIGINS", f" {ALLOWED}, http://localhost:3000 ,")
    assert Settings().CORS_ORIGINS == [ALLOWED, "http://localhost:3000"]
    monkeypatch.setenv("CORS_ORIGINS", "")
    assert Settings().CORS_ORIGINS == []
    monkeypatch.setenv("CORS_ORIGINS", "*")
    assert Settings().CORS_ORIGINS == ["*"]
    (tmp_path / "config.yml").write_text(f"CORS_ORIGINS: [{ALLOWED}]\n")
    monkeypatch.delenv("CORS_ORIGINS")
    assert Settings().CORS_ORIGINS == [ALLOWED]


@pytest.mark.parametrize("origin", [f"{ALLOWED}/", f"{ALLOWED}/app", "app.example.com", "null"])
def test_a_cors_origin_that_no_browser_sends_is_an_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, origin: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORS_ORIGINS", f"http://localhost:3000,{origin}")
    with pytest.raises(ValidationError, match="CORS_ORIGINS") as error:
        Settings()
    assert "not an origin" in str(error.value)
