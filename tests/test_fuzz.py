"""Schemathesis against a live server, with auth off and on: no 5xx, nothing undocumented.

Bounded (tests/schemathesis.toml: 10 examples per operation, one worker, a fixed seed, no
example database), so a run is repeatable and takes well under a minute.
"""

import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.testing.plugin import BACKEND
from app.testing.server import LiveServer

TESTS = Path(__file__).resolve().parent
ST = Path(sys.executable).with_name("st")
RUN_TIMEOUT = 300  # a bound for a hung run, not a speed requirement
PASSWORD = "fuzz-s3cret-pa55word"


def bearer_for_a_new_user(server: LiveServer) -> str:
    """Sign up and log in, for a token that lets the fuzzer past authentication."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        user = json.dumps({"email": "fuzzer@example.com", "password": PASSWORD})
        connection.request("POST", "/users/", user, {"Content-Type": "application/json"})
        assert connection.getresponse().read()
        form = f"username=fuzzer%40example.com&password={PASSWORD}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/token", form, headers)
        token: str = json.loads(connection.getresponse().read())["access_token"]
        return token
    finally:
        connection.close()


# On PostgreSQL only with auth on, which serves every operation of auth off and more: what
# differs there is what the database makes of the data (lengths, integer ranges, NUL).
AUTH_MODES = {"auth-off": False, "auth-on": True}
if BACKEND == "postgresql":
    del AUTH_MODES["auth-off"]
# With auth off, no "coverage" phase: its boundary values (two thirds of a run's cases, the
# same for every run) reach the same validators with auth on, which serves every operation.
PHASES = {False: "examples,fuzzing,stateful", True: "examples,coverage,fuzzing,stateful"}


@pytest.mark.parametrize("auth", list(AUTH_MODES.values()), ids=list(AUTH_MODES))
def test_schemathesis_finds_nothing(
    database_url: str, schema: Engine, tmp_path: Path, auth: bool
) -> None:
    schema.dispose()
    # Not measured by coverage (make test): the in-process tests reach the same validators,
    # and tracing the server would only slow the run down (COVERAGE_PROCESS_CONFIG="": off).
    env = {"DATABASE_URL": database_url, "COVERAGE_PROCESS_CONFIG": ""}
    if auth:
        env |= {"AUTH_ENABLED": "true", "SECRET_KEY": secrets.token_urlsafe(32)}
    with LiveServer(env, app="tests.light_app:app", extra_args=("--no-access-log",)) as server:
        headers = ["-H", f"Authorization: Bearer {bearer_for_a_new_user(server)}"] if auth else []
        started = time.monotonic()
        result = subprocess.run(
            [
                str(ST),
                "--config-file",
                str(TESTS / "schemathesis.toml"),
                "run",
                f"{server.url}/openapi.json",
                "--no-color",
                "--phases",
                PHASES[auth],
                *headers,
            ],
            cwd=tmp_path,  # whatever it writes stays out of the work tree
            env={
                **{k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_CONFIG"},
                "PYTHONPATH": str(TESTS.parent),  # for tests.fuzz_hooks
            },  # schemathesis is not ours to measure: coverage would only slow it down
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        log = server.log_text()
    summary = result.stdout[result.stdout.rfind("Test cases:") :].strip()
    took = time.monotonic() - started
    print(f"\nschemathesis, auth {'on' if auth else 'off'}, {took:.1f} s: {summary}")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "Traceback" not in log
    assert "passed" in summary
