"""Traces: the span tree of a request in-process (an in-memory exporter), the switch that
leaves everything untouched when off, the one-line error without the extra, and a live
two-worker ``app serve`` exporting OTLP/HTTP to a loopback receiver."""

import json
import logging
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import Engine, create_engine, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.main import app, create_app
from app.models import OutboxEvent
from app.observability import tracing
from app.observability.logs import RequestIdFilter
from app.outbox.handlers import Event, Registry
from app.outbox.store import Outbox
from app.outbox.worker import Worker, WorkerOptions
from app.testing.otlp import OtlpReceiver, ReceivedSpan
from app.testing.plugin import BACKEND, requested_settings, settings_free_environ
from app.testing.server import LiveServer
from containers import container
from tests.factories import create_user
from tests.test_telemetry import ExplodingReads

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the apps started in this test, every span kept in memory."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use_provider(provider)
    try:
        yield spans
    finally:
        tracing.use_provider(None)
        provider.shutdown()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return requested_settings(DATABASE_URL=database_url, ECHO_SQL=True)


@pytest.fixture
def traced(exporter: InMemorySpanExporter, schema: Engine) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    assert tracing.hooks is None  # the lifespan's shutdown stopped it


def hex_ids(span: ReadableSpan) -> tuple[str, str, str]:
    """(trace id, span id, parent span id or "")."""
    context = span.get_span_context()
    assert context is not None
    parent = format(span.parent.span_id, "016x") if span.parent else ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x"), parent


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if hex_ids(s)[2] == hex_ids(parent)[1]]


def statement(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("db.query.text") or attributes.get("db.statement") or "")


def test_a_request_continues_the_callers_trace_down_to_its_sql(
    traced: TestClient, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    user = create_user(traced)
    exporter.clear()
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    response = traced.get(f"/users/{user['id']}", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    spans = exporter.get_finished_spans()

    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "GET /users/{user_id}"
    assert hex_ids(server)[0] == CALLER_TRACE
    assert hex_ids(server)[2] == CALLER_SPAN  # the caller's span is its parent
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET",
        "http.route": "/users/{user_id}",
        "http.response.status_code": 200,
        "url.scheme": "http",
        "network.protocol.version": "1.1",
    }
    assert server.status.status_code == StatusCode.UNSET
    assert {hex_ids(s)[0] for s in spans} == {CALLER_TRACE}  # one trace

    (unit,) = named(spans, "db.read")
    assert hex_ids(unit)[2] == hex_ids(server)[1]
    assert (unit.attributes or {})["app.db.engine"] == "primary"
    assert (unit.attributes or {})["app.unit.kind"] == "read"
    below = children(spans, unit)
    assert [s.name for s in below if s.name == "db.gate"] == ["db.gate"]
    sql = [s for s in below if s.kind == SpanKind.CLIENT]
    assert sql, [s.name for s in spans]
    assert all(statement(s).lstrip().upper().startswith("SELECT") for s in sql)
    assert str(user["id"]) not in " ".join(statement(s) for s in sql)  # no parameters
    assert "/*" not in " ".join(statement(s) for s in sql)  # no SQL comments

    # Every record of the request carries its trace, the access line and SQL echo included.
    request_id = response.headers["x-request-id"]
    mine = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert {r.name for r in mine} >= {"app.access", "sqlalchemy.engine.Engine"}
    assert {(getattr(r, "trace_id", None), getattr(r, "span_id", None)) for r in mine} == {
        (CALLER_TRACE, hex_ids(server)[1])
    }

    # A write runs in a worker thread: its records carry the trace too.
    written = traced.post(f"/users/{user['id']}/items/", json={"title": "Pen"})
    (write_server,) = [s for s in exporter.get_finished_spans() if s.name.startswith("POST")]
    request_id = written.headers["x-request-id"]
    mine = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    (access,) = [r for r in mine if r.name == "app.access"]
    in_threads = [r for r in mine if r.thread != access.thread]
    assert in_threads  # the INSERT's echo, from the unit's thread
    assert {getattr(r, "trace_id", None) for r in mine} == {hex_ids(write_server)[0]}


def test_writes_unmatched_routes_and_failures(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    user = create_user(traced)
    assert traced.get("/no/such/route").status_code == 404
    with container.user_service.override(providers.Object(ExplodingReads(RuntimeError("x")))):
        assert traced.get("/users/").status_code == 500
    taken = traced.post("/users/", json={"email": user["email"], "password": "pw"})
    assert taken.status_code == 400
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == ["POST /users/", "GET", "GET /users/", "POST /users/"]
    assert [dict(s.attributes or {}).get("http.response.status_code") for s in servers] == [
        200,
        404,
        500,
        400,
    ]
    assert "http.route" not in (servers[1].attributes or {})
    assert servers[1].status.status_code == StatusCode.UNSET  # a 404 is the client's
    assert servers[2].status.status_code == StatusCode.ERROR
    assert (servers[2].attributes or {})["error.type"] == "RuntimeError"  # what escaped

    write, refused = named(spans, "db.write")
    # The unit that found the e-mail taken says why, and is no failure of the server's.
    assert (refused.attributes or {})["error.type"] == "app.exceptions.EmailAlreadyRegisteredError"
    assert refused.status.status_code == StatusCode.UNSET
    assert hex_ids(write)[2] == hex_ids(servers[0])[1]
    assert (write.attributes or {})["app.db.engine"] == "primary"
    if BACKEND == "sqlite":  # group commit: how many writes shared the transaction
        assert (write.attributes or {})["app.db.batch_size"] == 1
    assert any(statement(s).lstrip().upper().startswith("INSERT") for s in children(spans, write))
    failed = named(spans, "db.read")[-1]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "RuntimeError"


def test_no_password_or_token_in_any_span(
    exporter: InMemorySpanExporter, auth_client: TestClient, database_url: str
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    signup = {"email": "secret@example.com", "password": password}
    assert auth_client.post("/users/", json=signup).status_code == 200
    login = {"username": "secret@example.com", "password": password}
    token = auth_client.post("/token", data=login).json()["access_token"]
    assert auth_client.get("/users/me", headers={"Authorization": f"Bearer {token}"}).is_success
    assert auth_client.post("/token", data={**login, "password": "wrong"}).status_code == 401
    spans = exporter.get_finished_spans()
    assert any(s.name == "POST /token" for s in spans)
    text = "\n".join(span.to_json() for span in spans)
    database_password = make_url(database_url).password or "no-password-on-sqlite"
    for secret in (password, token, "$argon2", "secret@example.com", database_password):
        assert secret not in text


@pytest.fixture
def replicated(exporter: InMemorySpanExporter, schema: Engine) -> Iterator[TestClient]:
    """An app whose replica is the primary's database itself, serving reads (on SQLite it
    cannot answer the checks: it is marked up by hand, and not checked again)."""
    replica = create_engine(schema.url)
    with (
        container.replica_engines.override([replica]),
        TestClient(create_app()) as client,
    ):
        replicas = container.replicas()
        assert replicas is not None
        for each in replicas.replicas:
            each.up, each.lag, each.replayed = True, 0.0, 2**40
        yield client
    replica.dispose()


class TestReplicas:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        # Checked once at startup only; SQLite's writes one at a time, as with replicas.
        return requested_settings(
            DATABASE_URL=database_url, DB_REPLICA_CHECK_SECONDS=3600, SQLITE_WRITE_BATCH=1
        )

    def test_a_read_on_a_replica_says_which_and_why(
        self, replicated: TestClient, exporter: InMemorySpanExporter
    ) -> None:
        exporter.clear()
        assert replicated.get("/users/").status_code == 200
        assert replicated.get("/users/", headers={"X-Wal-Position": "0/10"}).status_code == 200
        spans = exporter.get_finished_spans()
        reads = named(spans, "db.read")
        assert [(r.attributes or {})["app.db.engine"] for r in reads] == ["replica-1"] * 2
        reasons = [(r.attributes or {})["app.db.route_reason"] for r in reads]
        assert reasons == ["no_position", "replayed"]
        servers = [s for s in spans if s.kind == SpanKind.SERVER]
        assert "app.wal_position.brought" not in (servers[0].attributes or {})
        assert (servers[1].attributes or {})["app.wal_position.brought"] == "0/10"
        assert all(children(spans, r) for r in reads)  # its SQL, on the replica's engine


def test_a_stored_traceparent_links_later_work_to_its_request(
    exporter: InMemorySpanExporter,
) -> None:
    assert tracing.current_traceparent() is None  # off
    with tracing.linked_span("off", None):
        pass
    tracing.start([])
    try:
        with tracing.linked_span("request", None):
            stored = tracing.current_traceparent()
        assert stored is not None
        with tracing.linked_span("outbox.deliver", stored):
            assert tracing.current_traceparent() not in (None, stored)
        with tracing.linked_span("no.link", "garbage"):
            pass
    finally:
        tracing.shutdown()
    request, deliver, unlinked = exporter.get_finished_spans()
    assert request.context is not None
    flags = int(request.context.trace_flags)
    assert stored == f"00-{hex_ids(request)[0]}-{hex_ids(request)[1]}-{flags:02x}"
    assert hex_ids(deliver)[0] != hex_ids(request)[0]  # a trace of its own ...
    (link,) = deliver.links  # ... linked to the request's span
    assert (link.context.trace_id, link.context.span_id) == (
        request.context.trace_id if request.context else 0,
        request.context.span_id if request.context else 0,
    )
    assert unlinked.links == ()


async def test_the_async_engine_is_traced_too(
    exporter: InMemorySpanExporter, async_engine: AsyncEngine
) -> None:
    tracing.start([("primary", async_engine.sync_engine)])
    try:
        with tracing.linked_span("job", None):
            async with async_engine.connect() as connection:
                assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        tracing.shutdown()
    sql, job = exporter.get_finished_spans()
    assert statement(sql) == "SELECT 1"
    assert hex_ids(sql)[2] == hex_ids(job)[1]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": ""}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp,none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_tracing_is_on_as_the_sdk_reads_the_variables(environ: dict[str, str], on: bool) -> None:
    assert tracing.requested(environ) is on
    assert tracing.problem(environ) is None


def test_what_cannot_be_served_is_one_line() -> None:
    assert tracing.problem({"OTEL_TRACES_EXPORTER": "zipkin"}) == (
        "OTEL_TRACES_EXPORTER=zipkin: unknown exporter 'zipkin' (this service has otlp, "
        "console and none)"
    )
    grpc = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert tracing.problem(grpc) == (
        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this service exports OTLP as http/protobuf"
    )


# Serves requests with tracing off, then lists what got imported.
_OFF = textwrap.dedent(
    """
    import sys
    from fastapi.testclient import TestClient
    from app.main import app
    with TestClient(app) as client:
        user = client.post("/users/", json={"email": "a@example.com", "password": "pw"})
        assert client.get(f"/users/{user.json()['id']}").status_code == 200
    print(" ".join(sorted(sys.modules)))
    """
)

# Hides the extra (the SDK, the exporter, the SQLAlchemy instrumentation), then runs `app`.
_WITHOUT_EXTRA = textwrap.dedent(
    """
    import importlib.abc, sys
    HIDDEN = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation")
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.startswith(HIDDEN):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Hide())
    from app.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_off_imports_no_sdk_and_no_tracing_code(tmp_path: Path) -> None:
    environ = settings_free_environ(DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}")
    environ = {k: v for k, v in environ.items() if not k.startswith("OTEL_")}
    environ.pop("COVERAGE_PROCESS_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-c", _OFF],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    modules = result.stdout.split()
    assert "app.main" in modules
    # FastAPI itself imports the OpenTelemetry API (its native telemetry, which the app
    # turns off); nothing beyond it is loaded.
    loaded = [m for m in modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exp"))]
    loaded += [m for m in modules if m.startswith("opentelemetry.instrumentation")]
    assert loaded == []
    assert "app.observability.otel" not in modules


def test_without_the_extra_app_serve_says_so_in_one_line(tmp_path: Path) -> None:
    environ = settings_free_environ(
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}", OTEL_TRACES_EXPORTER="otlp"
    )
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRA, "serve", "--port", "0"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "app: OTEL_TRACES_EXPORTER=otlp asks for traces, but the 'otel' extra is not "
        "installed (opentelemetry.sdk is missing): pip install "
        "'fastapi-di-sqlalchemy[otel]', or unset OTEL_TRACES_EXPORTER"
    ]


def _request_spans(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


@pytest.mark.any_backend  # the workers' SDKs and their flush, whatever the database
def test_two_workers_export_one_trace_per_request(database_url: str, schema: Engine) -> None:
    """Each worker starts its own SDK; the batch processor's delay is a minute, so the spans
    can only arrive through the flush of each worker's graceful shutdown."""
    schema.dispose()
    requests = 24
    with OtlpReceiver() as receiver:
        env = {
            "DATABASE_URL": database_url,
            "LOG_FORMAT": "json",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
            "OTEL_SERVICE_NAME": "traced-test",
        }
        with LiveServer(env, workers=2, serve=True) as server:
            user = httpx2.post(
                f"{server.url}/users/", json={"email": "live@example.com", "password": "pw"}
            ).json()
            headers = {"traceparent": TRACEPARENT, "X-Request-ID": "traced-1"}
            response = httpx2.get(f"{server.url}/users/{user['id']}", headers=headers)
            assert response.status_code == 200
            for _ in range(requests):  # a new connection each: both workers serve some
                assert httpx2.get(f"{server.url}/users/{user['id']}").status_code == 200
            pids = set(server.worker_pids())
            assert receiver.spans() == []  # queued in the workers
        assert server.stop() == 0

        def arrived(spans: list[ReceivedSpan]) -> bool:
            return len([s for s in spans if s.kind == 2]) >= requests + 2

        spans = receiver.wait_for(arrived, timeout=15)
    log = server.log_text()

    mine = _request_spans(spans, CALLER_TRACE)
    (root,) = [s for s in mine if s.kind == 2]
    assert root.name == "GET /users/{user_id}"
    assert root.parent_span_id == CALLER_SPAN
    assert root.resource["service.name"] == "traced-test"
    (unit,) = [s for s in mine if s.name == "db.read"]
    assert unit.parent_span_id == root.span_id
    assert unit.attributes["app.db.engine"] == "primary"
    sql = [s for s in mine if s.kind == 3]
    assert sql
    assert {s.parent_span_id for s in sql} == {unit.span_id}
    served_by = {s.resource["process.pid"] for s in spans if s.kind == 2}
    assert served_by == pids, (served_by, pids)

    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    traced = [line for line in lines if line.get("request_id") == "traced-1"]
    assert any(line["logger"] == "app.access" for line in traced)
    assert {(line.get("trace_id"), line.get("span_id")) for line in traced} == {
        (CALLER_TRACE, root.span_id)
    }


def test_the_cost_benchmark_runs_traced(tmp_path: Path) -> None:
    environ = {k: v for k, v in settings_free_environ().items() if not k.startswith("OTEL_")}
    command = ["bench.request_cost", "--requests", "20", "--rounds", "2", "--traced"]
    result = subprocess.run(
        [sys.executable, "-m", *command],
        env=environ,
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.startswith("traced: best "), result.stdout + result.stderr


async def test_an_events_delivery_links_to_the_write_that_made_it(
    exporter: InMemorySpanExporter, traced: TestClient, engine: Engine
) -> None:
    user = traced.post("/users/", json={"email": "ev@example.com", "password": "pw"})
    assert user.status_code == 200
    (write,) = named(exporter.get_finished_spans(), "db.write")
    with engine.connect() as connection:
        (stored,) = connection.execute(select(OutboxEvent.traceparent)).scalars().all()
    assert write.context is not None
    flags = int(write.context.trace_flags)
    assert stored == f"00-{hex_ids(write)[0]}-{hex_ids(write)[1]}-{flags:02x}"

    delivered: list[str] = []

    async def handle(event: Event) -> None:
        delivered.append(event.type)

    registry = Registry()
    registry.add("*", handle, name="test")
    worker = Worker(Outbox(engine), registry, WorkerOptions())  # traced: the app is running
    assert await worker.run_once() == 1
    assert delivered == ["user.created"]
    (delivery,) = named(exporter.get_finished_spans(), "outbox.deliver user.created")
    assert hex_ids(delivery)[0] != hex_ids(write)[0]  # a trace of its own, linked to the write
    (link,) = delivery.links
    assert (link.context.trace_id, link.context.span_id) == (
        write.context.trace_id,
        write.context.span_id,
    )
