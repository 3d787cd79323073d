"""GET /metrics: Prometheus text from prometheus-client, added up over every worker."""

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.observability import metrics
from app.runtime import runtime_of
from app.testing.processes import free_port
from app.testing.server import LiveServer
from containers import container
from tests.doubles import BlockingReads
from tests.factories import create_user

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient | httpx2.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(DATABASE_URL=database_url, METRICS_ENABLED=True)


class TestDisabled:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(DATABASE_URL=database_url)

    def test_metrics_are_off_by_default(self, client: TestClient) -> None:
        assert Settings.model_fields["METRICS_ENABLED"].default is False
        response = client.get("/metrics")
        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}


def test_requests_are_counted_by_method_route_and_status(client: TestClient) -> None:
    user = create_user(client)
    before = scrape(client)
    for _ in range(3):
        assert client.get(f"/users/{user['id']}").status_code == 200
    assert client.get("/users/999999").status_code == 404
    assert client.get(f"/nothing/here/{user['email']}").status_code == 404
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"method": "GET", "route": "/users/{user_id}"}
    assert delta("http_requests_total", status="200", **route) == 3
    assert delta("http_requests_total", status="404", **route) == 1
    assert delta("http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert delta("http_request_duration_seconds_count", **route) == 4
    assert delta("http_request_duration_seconds_bucket", le="+Inf", **route) == 4
    assert delta("db_gate_wait_seconds_count", kind="read") == 4
    assert delta("db_gate_wait_seconds_count", kind="write") == 0
    assert not [name for name, labels in after if user["email"] in str(labels)]
    assert value(after, "http_requests_in_progress") == 1  # the scrape itself


def test_an_unknown_method_is_one_label(client: TestClient) -> None:
    before = scrape(client)
    assert client.request("BREW", "/users/").status_code == 405
    after = scrape(client)
    labels = {"method": "other", "route": "/users/", "status": "405"}
    assert (
        value(after, "http_requests_total", **labels)
        - value(before, "http_requests_total", **labels)
        == 1
    )


@contextmanager
def blocked_read(client: TestClient) -> Iterator[None]:
    """A ``GET /users/`` in flight, holding a gate slot and a connection, until the end."""
    blocking = BlockingReads()
    with container.user_service.override(providers.Object(blocking)):
        holder = threading.Thread(target=lambda: client.get("/users/"))
        holder.start()
        assert blocking.entered.wait(timeout=30)
        try:
            yield
        finally:
            blocking.release.set()
            holder.join(timeout=30)


def cause(before: Samples, after: Samples, name: str) -> float:
    return value(after, "http_503_responses_total", cause=name) - value(
        before, "http_503_responses_total", cause=name
    )


class TestBusyGate:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        # Reads in threads: the blocking read would hold the event loop otherwise.
        return Settings(
            DATABASE_URL=database_url,
            METRICS_ENABLED=True,
            DB_POOL_SIZE=1,
            DB_MAX_OVERFLOW=0,
            DB_QUEUE_TIMEOUT=0.2,
            SQLITE_READ_ON_LOOP_MS=0,
        )

    def test_gate_timeouts_and_connections_in_use(self, client: TestClient) -> None:
        before = scrape(client)
        with blocked_read(client):
            during = scrape(client)  # needs no connection
            assert client.get("/items/").status_code == 503  # waits out DB_QUEUE_TIMEOUT
        after = scrape(client)
        assert value(during, "db_connections_in_use", engine="engine") == 1
        assert value(during, "http_requests_in_progress") == 2  # the blocked one, the scrape
        assert value(after, "db_connections_in_use", engine="engine") == 0
        assert cause(before, after, "gate_timeout") == 1
        waited = value(after, "db_gate_wait_seconds_count", kind="read") - value(
            after, "db_gate_wait_seconds_bucket", kind="read", le="0.1"
        )
        assert waited >= 1  # the one that gave up after 0.2 s


class TestRequestLimit:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(
            DATABASE_URL=database_url,
            METRICS_ENABLED=True,
            MAX_CONCURRENT_REQUESTS=1,
            SQLITE_READ_ON_LOOP_MS=0,  # the blocked read must not hold the event loop
        )

    def test_shed_requests_and_what_is_never_shed(self, client: TestClient) -> None:
        before = scrape(client)
        with blocked_read(client):
            shed = [client.get("/users/1") for _ in range(3)]
            live = client.get("/health/live")
            during = scrape(client)
        after = scrape(client)
        assert [r.status_code for r in shed] == [503] * 3
        assert all(r.headers["retry-after"] == "1" for r in shed)
        assert len({r.headers["x-request-id"] for r in shed}) == 3  # shed, but with an id
        assert live.status_code == 200
        assert cause(before, after, "request_limit") == 3
        shed_label = {"method": "GET", "route": "<unmatched>", "status": "503"}
        assert (
            value(during, "http_requests_total", **shed_label)
            - value(before, "http_requests_total", **shed_label)
            == 3
        )


def test_draining_and_database_unavailable(client: TestClient, tmp_path: Path) -> None:
    before = scrape(client)
    runtime_of(client.app).draining = True
    assert client.get("/health").status_code == 503
    runtime_of(client.app).draining = False
    unreachable = create_engine(f"sqlite:///{tmp_path / 'missing' / 'app.db'}")
    with container.engine.override(unreachable):
        assert client.get("/health").status_code == 503
    unreachable.dispose()
    after = scrape(client)
    assert cause(before, after, "draining") == 1
    assert cause(before, after, "database_unavailable") == 1
    assert cause(before, after, "gate_timeout") == 0


def test_a_failed_checkout_is_not_a_connection_in_use() -> None:
    engine = create_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{free_port()}/app",
        connect_args={"connect_timeout": 2},
        pool_pre_ping=True,
    )
    metrics.instrument_engine(engine, "closed-port")
    metrics.instrument_engine(engine, "closed-port")  # idempotent
    with pytest.raises(OperationalError):
        engine.connect()
    metrics.flush()
    assert REGISTRY.get_sample_value("db_connections_in_use", {"engine": "closed-port"}) == 0
    engine.dispose()


def test_figures_are_written_in_batches_with_the_values_of_direct_writes() -> None:
    """observe_request adds to this process's batch; a flush writes what prometheus-client's
    own observe() would have, bucket edges included."""
    route = "/batched/{id}"
    durations = [0.005, 0.0051, 0.3, 10.0, 11.0, 0.0]
    reference = CollectorRegistry()
    direct = Histogram("direct_seconds", "the same observations", registry=reference)
    metrics.flush()
    for seconds in durations:
        metrics.request_started()
        metrics.observe_request("GET", route, 200, seconds, {"read": seconds / 2})
        direct.observe(seconds)
    labels = {"method": "GET", "route": route}
    assert REGISTRY.get_sample_value("http_request_duration_seconds_count", labels) in (None, 0)
    metrics.flush()
    for suffix in ("_count", "_sum"):
        assert REGISTRY.get_sample_value(
            f"http_request_duration_seconds{suffix}", labels
        ) == reference.get_sample_value(f"direct_seconds{suffix}")
    for bound in ("0.005", "0.01", "0.5", "10.0", "+Inf"):
        assert REGISTRY.get_sample_value(
            "http_request_duration_seconds_bucket", {**labels, "le": bound}
        ) == reference.get_sample_value("direct_seconds_bucket", {"le": bound}), bound
    counted = {**labels, "status": "200"}
    assert REGISTRY.get_sample_value("http_requests_total", counted) == len(durations)


@pytest.mark.any_backend  # counts requests, whatever database served them
def test_a_serving_process_writes_its_figures_on_its_own(client: TestClient) -> None:
    """Without a scrape in this process, the figures reach prometheus-client's values within
    FLUSH_SECONDS (what another worker answering a scrape reads)."""
    labels = {"method": "GET", "route": "/users/", "status": "200"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    assert client.get("/users/").status_code == 200
    deadline = time.monotonic() + FLUSHED_WITHIN
    while (REGISTRY.get_sample_value("http_requests_total", labels) or 0) == before:
        assert time.monotonic() < deadline, "the figures were never written"
        time.sleep(metrics.FLUSH_SECONDS / 4)
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1


def test_dead_processes_leave_the_live_gauges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_DIR_ENV, str(tmp_path))
    dead = _exited_pid()
    files = [
        f"gauge_livesum_{dead}.db",
        f"gauge_liveall_{dead}.db",
        f"counter_{dead}.db",
        f"gauge_livesum_{os.getpid()}.db",
    ]
    for name in files:
        (tmp_path / name).write_bytes(b"")
    metrics.forget_dead_processes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"gauge_livesum_{os.getpid()}.db"]
    )


def _exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


WORKERS = 2
REQUESTS = 40
MAX_REQUESTS = 400
BURST = 8
ROUTE = {"method": "GET", "route": "/users/{user_id}", "status": "200"}
FLUSHED_WITHIN = 60.0
"""A bound for a hung worker, not a timing: a worker writes every FLUSH_SECONDS."""


def _served_by(server: LiveServer) -> Counter[int]:
    """GET /users/{id} access lines by worker pid."""
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    return Counter(line["pid"] for line in lines if line.get("route") == "/users/{user_id}")


@pytest.mark.any_backend  # the workers' figures add up whatever database served them
def test_two_workers_add_up_in_one_scrape(database_url: str, schema: Engine) -> None:
    schema.dispose()
    env = {"DATABASE_URL": database_url, "METRICS_ENABLED": "true", "LOG_FORMAT": "json"}
    with LiveServer(env, workers=WORKERS, serve=True) as server:
        directory = _metrics_directory(server.worker_pids()[0])
        with httpx2.Client(base_url=server.url) as client:
            user = client.post("/users/", json={"email": "w@example.com", "password": "pw"})
            assert user.status_code == 200
        path = f"/users/{user.json()['id']}"

        def get(_: int) -> int:
            with httpx2.Client(base_url=server.url) as client:
                return client.get(path).status_code

        sent = 0
        # A connection each, in bursts (one worker busy while the other accepts: on a busy
        # machine one can win every accept of connections opened one after the other),
        # until both workers took some (bounded).
        with ThreadPoolExecutor(max_workers=BURST) as pool:
            while sent < REQUESTS or (len(_served_by(server)) < WORKERS and sent < MAX_REQUESTS):
                assert set(pool.map(get, range(BURST))) == {200}
                sent += BURST
        with httpx2.Client(base_url=server.url) as client:
            # Each worker writes its figures every FLUSH_SECONDS (and the one that answers
            # a scrape, its own first): wait for the other's next write (bounded).
            deadline = time.monotonic() + FLUSHED_WITHIN
            while value(scrape(client), "http_requests_total", **ROUTE) < sent:
                assert time.monotonic() < deadline, "a worker never wrote its figures"
                time.sleep(metrics.FLUSH_SECONDS / 4)
            scrapes = [scrape(client) for _ in range(4)]  # answered by either worker
        served = _served_by(server)
    assert len(served) == WORKERS, f"one worker served all {sent} requests"
    for samples in scrapes:
        assert value(samples, "http_requests_total", **ROUTE) == sent
        assert value(samples, "db_connections_in_use", engine="engine") == 0
    assert not directory.exists()  # app serve removed it


def _metrics_directory(pid: int) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR that ``app serve`` gave its worker ``pid``."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    prefix = f"{metrics.MULTIPROC_DIR_ENV}=".encode()
    (found,) = [entry[len(prefix) :] for entry in environ if entry.startswith(prefix)]
    return Path(found.decode())
