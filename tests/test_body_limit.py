"""MAX_BODY_BYTES: a larger body gets 413 with a JSON detail, from Content-Length before the
body is read, and for a chunked body as soon as the limit is crossed, the rest unread."""

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from app.config import Settings
from app.main import create_app
from app.middleware.body_limit import BodyLimit
from app.testing import routes
from app.testing.plugin import with_auth
from app.testing.server import LiveServer
from containers import container

pytestmark = pytest.mark.any_backend  # the body limit refuses before any database work

LIMIT = Settings.model_fields["MAX_BODY_BYTES"].default
DETAIL = {"detail": f"Request body too large: at most {LIMIT} bytes"}
CHUNK = 64 * 1024
SOCKET_TIMEOUT = 30.0  # a liveness bound: the answer needs no body, so it comes at once


def test_the_default_limit_is_one_mebibyte() -> None:
    assert LIMIT == 1024 * 1024


def padded(request: routes.ExampleRequest) -> routes.ExampleRequest:
    """``request`` with a ``pad`` field that the schemas ignore, making its body larger than
    the limit."""
    assert request.body is not None
    return request._replace(body={**request.body, "pad": "x" * LIMIT})


@pytest.fixture(params=[False, True], ids=["auth-off", "auth-on"])
def served(
    request: pytest.FixtureRequest, schema: Engine, settings: Settings
) -> Iterator[tuple[FastAPI, TestClient]]:
    with container.settings.override(with_auth(settings) if request.param else settings):
        served_app = create_app()
        with TestClient(served_app) as client:
            yield served_app, client


def test_every_operation_with_a_body_refuses_one_byte_too_many(
    served: tuple[FastAPI, TestClient],
) -> None:
    served_app, client = served
    with_body = [r for r in routes.example_requests(served_app) if r.body is not None]
    assert {r.template for r in with_body} >= {"/users/", "/items/{item_id}"}
    for request in with_body:
        response = padded(request).send(client)
        assert response.status_code == 413, (request, response.text)
        assert response.json() == DETAIL
        assert response.headers["content-type"] == "application/json"


def test_a_body_of_exactly_the_limit_is_read(client: TestClient) -> None:
    body = json.dumps({"email": "limit@example.com", "password": "s3cret"}).encode()
    exactly = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    for content, status in ((exactly, 200), (exactly + b" ", 413)):
        response = client.post(
            "/users/", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == status, response.text
    assert len(exactly) == LIMIT


def test_a_smaller_limit_comes_from_the_settings(schema: Engine, settings: Settings) -> None:
    small = settings.model_copy(update={"MAX_BODY_BYTES": 100})
    with container.settings.override(small), TestClient(create_app()) as client:
        response = client.post("/users/", json={"email": "a@example.com", "password": "x" * 80})
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large: at most 100 bytes"}


def test_openapi_declares_400_and_413_wherever_a_body_is_taken(
    served: tuple[FastAPI, TestClient],
) -> None:
    _, client = served
    paths = client.get("/openapi.json").json()["paths"]
    operations = [op for ops in paths.values() for op in ops.values()]
    taking = [op for op in operations if "requestBody" in op]
    assert len(taking) >= 4
    assert all({"400", "413", "422"} <= set(op["responses"]) for op in taking)
    assert not any("413" in op["responses"] for op in operations if op not in taking)


# The middleware on its own: chunked bodies, counted as the app reads them


def _endless_chunks(limit: int) -> tuple[Receive, list[int]]:
    """A receive that would deliver 50 MB in 64 KiB chunks; the list counts what it gave."""
    given = [0]

    async def receive() -> Message:
        assert given[0] < 50_000_000, "read past the whole body"
        given[0] += CHUNK
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": True}

    return receive, given


async def _call(asgi: BodyLimit, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await asgi(scope, receive, send)
    return sent


async def _read_all(request: Request) -> Response:
    return JSONResponse({"read": len(await request.body())})


async def test_a_chunked_body_is_cut_off_as_soon_as_it_crosses_the_limit() -> None:
    limit = 200_000
    inner = FastAPI(routes=[Route("/", _read_all, methods=["POST"])])
    receive, given = _endless_chunks(limit)
    sent = await _call(BodyLimit(inner, max_bytes=limit), receive)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {
        "detail": f"Request body too large: at most {limit} bytes"
    }
    assert limit < given[0] <= limit + CHUNK


async def test_a_cut_off_outside_any_exception_handler_is_still_a_json_413() -> None:
    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            await receive()

    receive, given = _endless_chunks(1000)
    sent = await _call(BodyLimit(raw, max_bytes=1000), receive)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert given[0] == CHUNK


async def test_a_cut_off_after_the_response_started_is_an_error() -> None:
    async def late(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await receive()

    receive, _ = _endless_chunks(1000)
    with pytest.raises(Exception, match="Request body too large"):
        await _call(BodyLimit(late, max_bytes=1000), receive)


async def test_websockets_and_lifespan_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        raise AssertionError("not read")

    async def send(message: Message) -> None:
        raise AssertionError("not sent")

    for kind in ("lifespan", "websocket"):
        await BodyLimit(inner, max_bytes=1)({"type": kind}, receive, send)
    assert seen == ["lifespan", "websocket"]


# A real server, raw sockets


@pytest.fixture
def live(database_url: str, schema: Engine) -> Iterator[LiveServer]:
    schema.dispose()
    with LiveServer({"DATABASE_URL": database_url}, extra_args=("--no-access-log",)) as server:
        yield server


def _connect(server: LiveServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=SOCKET_TIMEOUT)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise LookupError("VmHWM")


def test_a_declared_50_mb_body_is_refused_before_it_is_sent(live: LiveServer) -> None:
    with _connect(live) as sock:
        sock.sendall(
            b"POST /users/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\nExpect: 100-continue\r\n\r\n"
        )
        status, headers, body = _read_response(sock)  # not "100 Continue": no body wanted
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == DETAIL


def test_a_chunked_body_gets_413_once_past_the_limit_and_the_rest_is_discarded(
    live: LiveServer,
) -> None:
    chunk = b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
    peak_before = _peak_rss_kib(live.pid)
    with _connect(live) as sock:
        sock.sendall(
            b"POST /users/ HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk * (LIMIT // CHUNK + 1)
        )
        status, _, body = _read_response(sock)  # while the body is still unfinished
        assert status == 413
        assert json.loads(body) == DETAIL
        for _ in range(50_000_000 // CHUNK):  # the other 49 MB of a 50 MB body
            sock.sendall(chunk)
        sock.sendall(b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _, body = _read_response(sock)  # the same connection serves the next request
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    grown_mib = (_peak_rss_kib(live.pid) - peak_before) / 1024
    print(f"\nworker peak RSS grew {grown_mib:.1f} MiB over a 50 MB chunked body")
    assert grown_mib < 20  # reading it whole takes over 150 MiB
