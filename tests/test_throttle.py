"""Login throttling: 5 failures per e-mail in 15 minutes, 30 attempts per address a minute,
counted in the database, so two workers share one allowance."""

import contextlib
import http.client
import json
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from app.auth.throttle import LoginThrottle
from app.config import Settings
from app.database import SessionLocal
from app.main import create_app
from app.models import LoginCounter
from app.testing.plugin import count_rows, with_auth
from app.testing.server import LiveServer
from containers import container
from tests.factories import PASSWORD, create_user, unique_email

THROTTLED = {"detail": "Too many login attempts, retry later"}
WRONG = "not the password"


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(schema: Engine, settings: Settings, clock: Clock) -> Iterator[TestClient]:
    """The app with auth on, its throttle on the test's clock."""
    s = with_auth(settings)
    throttle = LoginThrottle(
        s.SECRET_KEY,
        max_failures=s.LOGIN_MAX_FAILURES,
        failure_window=s.LOGIN_FAILURE_WINDOW_SECONDS,
        max_attempts_per_minute=s.LOGIN_MAX_ATTEMPTS_PER_MINUTE,
        clock=clock,
    )
    with (
        container.settings.override(s),
        container.login_throttle.override(providers.Object(throttle)),
        TestClient(create_app()) as test_client,
    ):
        yield test_client


def login(client: TestClient, email: str, password: str = WRONG) -> tuple[int, Any, str | None]:
    response = client.post("/token", data={"username": email, "password": password})
    return response.status_code, response.json(), response.headers.get("retry-after")


def statuses(client: TestClient, email: str, times: int, password: str = WRONG) -> list[int]:
    return [login(client, email, password)[0] for _ in range(times)]


def test_five_failures_lock_the_e_mail_until_the_window_ends(
    client: TestClient, clock: Clock
) -> None:
    email = create_user(client)["email"]
    assert statuses(client, email, 5) == [401] * 5
    assert login(client, email) == (429, THROTTLED, "900")
    assert login(client, email, PASSWORD) == (429, THROTTLED, "900")  # the right password too
    other = create_user(client)["email"]
    assert login(client, other, PASSWORD)[0] == 200  # only that e-mail
    clock.advance(899.5)
    assert login(client, email, PASSWORD) == (429, THROTTLED, "1")
    clock.advance(0.5)
    assert login(client, email, PASSWORD)[0] == 200


def test_the_window_runs_from_the_first_failure(client: TestClient, clock: Clock) -> None:
    email = create_user(client)["email"]
    assert statuses(client, email, 1) == [401]
    clock.advance(600)
    assert statuses(client, email, 4) == [401] * 4
    assert login(client, email) == (429, THROTTLED, "300")
    clock.advance(300)
    assert statuses(client, email, 5) == [401] * 5  # a new window
    assert login(client, email)[0] == 429


def test_a_successful_login_clears_the_failures(client: TestClient) -> None:
    email = create_user(client)["email"]
    assert statuses(client, email, 4) == [401] * 4
    assert login(client, email, PASSWORD)[0] == 200
    assert statuses(client, email, 5) == [401] * 5
    assert login(client, email)[0] == 429


def test_case_and_spaces_do_not_make_another_e_mail(client: TestClient) -> None:
    email = create_user(client)["email"]
    for variant in (email, email.upper(), f" {email} ", email.title(), email):
        assert login(client, variant)[0] == 401
    assert login(client, email.upper())[0] == 429


def test_unknown_and_known_e_mails_are_throttled_alike(client: TestClient) -> None:
    known = create_user(client)["email"]
    unknown = unique_email("nobody")
    answers = [[login(client, email) for _ in range(7)] for email in (known, unknown)]
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [401] * 5 + [429] * 2


def test_an_address_gets_30_attempts_a_minute(client: TestClient, clock: Clock) -> None:
    emails = [unique_email("guess") for _ in range(31)]
    assert [login(client, e)[0] for e in emails[:30]] == [401] * 30
    assert login(client, emails[30]) == (429, THROTTLED, "60")
    clock.advance(45)
    assert login(client, unique_email("late")) == (429, THROTTLED, "15")
    clock.advance(15)
    assert login(client, emails[30])[0] == 401  # a new minute


def test_counters_hold_no_e_mail_or_address_and_expired_ones_go(
    client: TestClient, clock: Clock
) -> None:
    email = create_user(client)["email"]
    login(client, email)
    with SessionLocal() as session:
        keys = session.scalars(select(LoginCounter.key)).all()
    assert len(keys) == 2  # the e-mail's and the address's
    assert all(re.fullmatch("[0-9a-f]{64}", key) for key in keys)
    clock.advance(900)
    login(client, unique_email())
    assert count_rows(LoginCounter) == 2  # the expired two are gone, two new ones


def test_openapi_declares_429_with_retry_after_for_token(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/token"]["post"]
    assert "Retry-After" in operation["responses"]["429"]["headers"]


# Two workers of a real server


@pytest.fixture
def log_config(tmp_path: Path) -> Path:
    """uvicorn's logging with each line's process id: which worker served a request."""
    handler = {"class": "logging.StreamHandler", "formatter": "pid", "stream": "ext://sys.stdout"}
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"pid": {"format": "pid=%(process)d %(message)s"}},
        "handlers": {"out": handler},
        "loggers": {
            "uvicorn": {"handlers": ["out"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["out"], "level": "INFO", "propagate": False},
        },
    }
    path = tmp_path / "log.json"
    path.write_text(json.dumps(config))
    return path


@contextlib.contextmanager
def two_workers(
    database_url: str, log_config: Path, **settings: str
) -> Iterator[tuple[LiveServer, list[http.client.HTTPConnection]]]:
    """A 2-worker server with auth on, and a keep-alive connection to each worker."""
    env = {
        "DATABASE_URL": database_url,
        "AUTH_ENABLED": "true",
        "SECRET_KEY": secrets.token_urlsafe(32),
        **settings,
    }
    args = ("--log-config", str(log_config), "--timeout-keep-alive", "60")
    light = "tests.light_app:app"  # test-sized password hashing: the counts are the subject
    with (
        LiveServer(env, workers=2, extra_args=args, app=light) as server,
        contextlib.ExitStack() as stack,
    ):
        yield server, pinned_connections(server, stack)


BURST = 8
"""Connections opened at once by pinned_connections."""


def pinned_connections(
    server: LiveServer, stack: contextlib.ExitStack
) -> list[http.client.HTTPConnection]:
    """One keep-alive connection to each worker. Which worker accepts a connection is up to
    the kernel, and on a busy machine one worker can win every accept of connections opened
    one after the other: so open them in bursts, whose requests keep one worker busy while
    the other accepts, until each worker has one (30 s at most)."""
    pinned: dict[int, http.client.HTTPConnection] = {}

    def connect(_: int) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
        connection.request("GET", "/health")
        connection.getresponse().read()
        return connection

    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        while len(pinned) < 2 and time.monotonic() < deadline:
            for connection in pool.map(connect, range(BURST)):
                worker = _served_by(server, connection.sock.getsockname()[1])
                if worker in pinned:
                    connection.close()
                else:
                    pinned[worker] = connection
                    stack.callback(connection.close)
    assert len(pinned) == 2, f"30 s of connections, all to one worker: {list(pinned)}"
    assert set(pinned) == set(server.worker_pids())
    return list(pinned.values())


def _served_by(server: LiveServer, client_port: int) -> int:
    pattern = re.compile(rf"pid=(\d+) 127\.0\.0\.1:{client_port} - ")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if found := pattern.search(server.log_text()):
            return int(found[1])
        time.sleep(0.02)
    raise AssertionError(f"no access log line for port {client_port}")


def post_login(
    connection: http.client.HTTPConnection, email: str, password: str = WRONG
) -> tuple[int, str | None]:
    body = f"username={email}&password={password}".replace("@", "%40").replace(" ", "+")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    connection.request("POST", "/token", body=body, headers=headers)
    response = connection.getresponse()
    payload = json.loads(response.read())
    if response.status == 429:
        assert payload == THROTTLED
    return response.status, response.getheader("retry-after")


def signup(connection: http.client.HTTPConnection, email: str) -> None:
    body = json.dumps({"email": email, "password": PASSWORD})
    connection.request("POST", "/users/", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    response.read()


@pytest.mark.serial
def test_two_workers_share_one_allowance_per_e_mail(
    database_url: str, schema: Engine, log_config: Path
) -> None:
    schema.dispose()
    unlimited = {"LOGIN_MAX_ATTEMPTS_PER_MINUTE": "1000"}
    with two_workers(database_url, log_config, **unlimited) as (server, (first, second)):
        email, other = unique_email(), unique_email()
        signup(first, email)
        signup(second, other)
        failures = [post_login((first, second)[i % 2], email)[0] for i in range(5)]
        sixth = post_login(second, email)
        right = post_login(first, email, PASSWORD)
        assert failures == [401] * 5
        assert sixth[0] == 429
        assert right[0] == 429
        assert 1 <= int(right[1] or 0) <= 900
        assert post_login(second, other, PASSWORD)[0] == 200

        # At once, on fresh connections: no count is lost between the workers.
        burst = unique_email("burst")

        def attempt(_: int) -> int:
            connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
            try:
                return post_login(connection, burst)[0]
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=12) as pool:
            at_once = sorted(pool.map(attempt, range(12)))
        print(
            f"\n2 workers {server.worker_pids()}: alternating 5 failures -> {failures}, "
            f"6th {sixth[0]}, right password {right[0]} (Retry-After {right[1]}); "
            f"12 at once -> {at_once}"
        )
        assert at_once == [401] * 5 + [429] * 7


@pytest.mark.serial
def test_two_workers_share_one_allowance_per_address(
    database_url: str, schema: Engine, log_config: Path
) -> None:
    schema.dispose()
    with two_workers(database_url, log_config) as (server, (first, second)):
        locked = unique_email("locked")
        # 5 failures, then 25 attempts that the e-mail rule refuses before any password
        # check (quick, well within the minute), all counted for 127.0.0.1.
        answers = [post_login((first, second)[i % 2], locked)[0] for i in range(30)]
        assert answers == [401] * 5 + [429] * 25
        fresh = [post_login(connection, unique_email("fresh")) for connection in (first, second)]
        print(
            f"\n2 workers {server.worker_pids()}, alternating: 30 attempts -> "
            f"{answers.count(401)} x 401, {answers.count(429)} x 429; 31st and 32nd: {fresh}"
        )
        assert [status for status, _ in fresh] == [429, 429]
        assert all(1 <= int(wait or 0) <= 60 for _, wait in fresh)
