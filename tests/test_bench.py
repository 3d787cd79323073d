"""The benchmark: its smoke mode prints every table, and its four servers answer alike."""

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import create_engine, insert

from app.database import Base
from app.models import Item, User
from app.testing.plugin import BACKEND, SERVER_URL
from app.testing.postgres import PostgresServer, missing_binaries
from app.testing.server import LiveServer

ROOT = Path(__file__).resolve().parent.parent
HTTP_REQUESTS = ("GET /users/{id}", "GET /items/?limit=100", "POST /users/{id}/items/")
SERVERS = {
    "app": "app.main:app",
    "tutorial": "bench.baseline_app:app",
    "framework floor": "bench.framework_app:app",
    "floor": "bench.floor_app:app",
}


def _tables(output: str) -> dict[str, list[list[str]]]:
    """Markdown tables by title: the rows under the header, as stripped cells."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in output.splitlines():
        if line.startswith("### "):
            title = line.removeprefix("### ")
            tables[title] = []
        elif line.startswith("| ") and title:
            tables[title].append([cell.strip() for cell in line.strip(" |").split(" | ")])
    return {name: rows[1:] for name, rows in tables.items()}


def _table(tables: dict[str, list[list[str]]], prefix: str) -> list[list[str]]:
    matches = [rows for name, rows in tables.items() if name.startswith(prefix)]
    assert len(matches) == 1, f"expected one table titled {prefix!r}, got {list(tables)}"
    return matches[0]


def _number(cell: str) -> float:
    match = re.fullmatch(r"(-?[\d,.]+)\s*(µs|ns|MiB|x|%)?", cell)
    assert match is not None, f"not a measurement: {cell!r}"
    return float(match.group(1).replace(",", ""))


def _numbers(cell: str) -> list[float]:
    """``"a / b / c"`` cells: one measurement per server."""
    return [_number(part) for part in cell.split(" / ")]


def _check_http_rows(rows: list[list[str]], servers: int) -> None:
    """req/s of every server, then its latency, CPU and peak RSS, all measured."""
    for row in rows:
        rates = [_number(cell) for cell in row[1 : 1 + servers]]
        assert all(r > 0 for r in rates), f"a server served no 2xx: {row}"
        assert row[-1].split(" ")[0] in ("yes", "NO"), row
        rss = _numbers(row[-3])
        assert len(rss) == servers
        assert all(mib > 10 for mib in rss), row


def _check_replicas_rows(rows: list[list[str]]) -> None:
    """Section 8: both read requests, measured in A and B under writes; B's reads went to the
    replica, A's database on the standby ran nothing."""
    assert [row[0] for row in rows] == list(HTTP_REQUESTS[:2])
    for row in rows:
        assert len(row) == 14, row
        assert _number(row[1]) > 0, f"A served no 2xx reads: {row}"
        assert _number(row[2]) > 0, f"B served no 2xx reads: {row}"
        assert _number(row[3]) > 0, f"no ratio B / A: {row}"
        assert all(w > 0 for w in _numbers(row[6])), f"a configuration wrote nothing: {row}"
        assert _number(row[11]) > 0, f"the replica served none of B's reads: {row}"
        on_replica, on_primary = _numbers(row[12])
        assert on_replica > 0, row
        assert abs(on_replica * 100 / (on_replica + on_primary) - _number(row[11])) < 0.06, row
        standby_a, standby_b = _numbers(row[13])
        assert standby_a == 0, f"A's reads reached the standby: {row}"
        assert standby_b > 0, f"B's reads did not reach the standby: {row}"


def _postgres_can_run() -> bool:
    return not [name for name in missing_binaries() if name != "pgbouncer"]


def _replicas_can_run() -> bool:
    return shutil.which("wrk") is not None and _postgres_can_run()


def test_quick_benchmark_prints_every_table_with_its_rows() -> None:
    """One run for both backends (in the SQLite run of make test): PostgreSQL is the test
    run's server, or a throwaway one where the binaries are installed."""
    # Not measured by coverage (make test): its ~25 servers would only run slower and leave
    # data files to combine; what they run, the rest of the suite covers.
    unmeasured = ("BENCH_POSTGRES_URL", "COVERAGE_PROCESS_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in unmeasured}
    postgres = BACKEND == "postgresql" or _postgres_can_run()
    with ExitStack() as stack:
        if BACKEND == "postgresql":
            env["BENCH_POSTGRES_URL"] = SERVER_URL
        elif postgres:
            server = stack.enter_context(PostgresServer.create(wal_level_replica=False))
            env["BENCH_POSTGRES_URL"] = server.url()
        # Its two halves at once, so that this test is not the one the suite waits for;
        # split where they take about as long (78 s each alone; 1-6 and 7-11 took 46 and 103).
        halves = [
            subprocess.Popen(
                [sys.executable, "-m", "bench", "--quick", "--sections", sections],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for sections in ("1-8", "9-11")
        ]
        outputs = [half.communicate(timeout=420) for half in halves]
    for half, (out, err) in zip(halves, outputs, strict=True):
        assert half.returncode == 0, out + err
    stdout = "".join(out for out, _ in outputs)
    tables = _tables(stdout)

    sessions = _table(tables, "1. Session factory")
    assert [row[0] for row in sessions] == [
        "SessionLocal() + close() vs sessionmaker",
        "AsyncSessionLocal() + await close() vs async_sessionmaker",
    ]
    for row in sessions:
        assert _number(row[1]) > 0
        assert _number(row[2]) > 0
        assert row[5] in ("yes", "NO")

    providers = _table(tables, "2. Provider resolution")
    assert [row[0].split(" vs ")[0] for row in providers] == [
        "app.database.engine",
        "@inject call (Provide[Container.item_service])",
    ]
    assert all(_number(row[1]) > 0 for row in providers)

    targets = 2
    if shutil.which("wrk"):
        http = _table(tables, "3. HTTP under wrk on SQLite")
        assert [(row[0], row[1]) for row in http] == [(r, "1") for r in HTTP_REQUESTS]
        _check_http_rows([row[1:] for row in http], servers=4)
        for row in http:
            assert _number(row[6]) > 0, f"no ratio to the tutorial: {row}"
            assert _number(row[7]) > 0, f"no ratio to the framework floor: {row}"
            assert _number(row[8]) > 0, f"no ratio to the floor: {row}"
        memory = _table(tables, "Memory")
        assert [row[0] for row in memory] == ["1"]
        assert all(_number(cell) > 10 for cell in memory[0][1:5])
        assert memory[0][7] in ("yes", "NO")
        # users: framework floor and tutorial; items: framework floor; write: both; memory
        targets += 2 + 1 + 2 + 1

        growth = _table(tables, "6. Growth on SQLite")
        labels = [row[0] for row in growth]
        keyset = ["GET /items/?limit=100&after_id=9900"] if len(labels) == 5 else []
        assert labels == [
            "GET /users/{id}",
            "GET /items/?limit=100&skip=0",
            "GET /items/?limit=100&skip=9900",
            *keyset,
            "POST /users/{id}/items/",
        ]
        assert all(_number(row[1]) > 0 for row in growth), growth
        assert _number(growth[2][3]) > 0
        assert "Seeded in" in stdout

        operations = _table(tables, "7. Telemetry overhead")
        assert [row[0] for row in operations] == [
            "access log and metrics off",
            "JSON access log + metrics",
            "the same + traces (default sampler)",
        ]
        for row in operations:
            assert _number(row[1]) > 0  # req/s
            assert _number(row[2]) > 0  # against off's
            assert _number(row[3]) > 0  # CPU ms/req
        assert [row[-1] for row in operations][::2] == ["-", "-"]
        assert operations[1][-1] in ("yes", "NO")
        targets += 1

        outbox = _table(tables, "9. The outbox")
        assert [row[0] for row in outbox] == ["SQLite", "PostgreSQL"][: 2 if postgres else 1]
        for row in outbox:
            assert all(_number(cell) > 0 for cell in row[1].split(" / "))
            assert all(_number(cell) > 0 for cell in row[5].split(" / "))
            assert _number(row[6].split(" ")[0]) > 0, f"no delivery rate: {row}"

        keyed = _table(tables, "10. Idempotency-Key")
        assert [row[0] for row in keyed] == ["SQLite", "PostgreSQL"][: 2 if postgres else 1]
        assert all(_number(row[1]) > 0 and _number(row[2]) > 0 for row in keyed), keyed

        tail = _table(tables, "11. The tail")
        backends = ["SQLite", "PostgreSQL"][: 2 if postgres else 1]
        servers = ["app serve", "app serve --loop uvloop"]
        assert [(row[0], row[1], row[2].split(":")[0]) for row in tail] == [
            (backend, connections, server)
            for backend in backends
            for connections in ("32", "128")
            for server in (*servers, "baseline")
        ]
        for row in tail:
            if row[2] in servers:
                assert _number(row[3]) > 0, row
                assert _number(row[4]) > 0, row
                assert _number(row[4]) <= _number(row[5]) <= _number(row[6]) <= _number(row[7])
            assert (row[-1] in ("yes", "NO")) == (row[2] == "app serve"), row
        targets += 2 * len(backends)

        if _replicas_can_run():
            _check_replicas_rows(_table(tables, "8. Read replica"))
        else:
            assert "### 8. Read replica: not run" in stdout

        if postgres:
            pg = _table(tables, "5. HTTP under wrk on PostgreSQL")
            assert [row[0] for row in pg] == list(HTTP_REQUESTS)
            _check_http_rows(pg, servers=2)
            targets += 3
            assert _number(_table(tables, "6. Growth on PostgreSQL")[2][1]) > 0
    else:
        assert "wrk is not installed" in stdout
        assert "apt-get install wrk" in stdout
    if not postgres:
        assert "BENCH_POSTGRES_URL is unset" in stdout
        assert not [name for name in tables if "PostgreSQL" in name]

    floor = _table(tables, "4. SQLite write floor")
    assert [row[0] for row in floor] == [
        "raw sqlite3",
        "SessionLocal.begin() + add(Item)",
        "AsyncSessionLocal.begin() + add(Item)",
    ]
    assert all(_number(row[1]) > 0 for row in floor)

    summaries = re.findall(r"^### Targets: (\d+) of (\d+) met$", stdout, re.MULTILINE)
    assert len(summaries) == 2, stdout
    assert sum(int(total) for _, total in summaries) == targets


def _seed(path: Path) -> str:
    """Users with and without items, an inactive one, and text JSON must escape."""
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(
                insert(User),
                [
                    {"email": "ada@example.com", "hashed_password": "-", "is_active": True},
                    {"email": "zoë@example.com", "hashed_password": "-", "is_active": False},
                    {"email": "no-items@example.com", "hashed_password": "-", "is_active": True},
                ],
            )
            connection.execute(
                insert(Item),
                [
                    {"title": f"item {n}", "description": f"number {n}", "owner_id": 1}
                    for n in range(5)
                ]
                + [
                    {"title": 'quote " backslash \\ slash /', "description": None, "owner_id": 2},
                    {"title": "tab\tnewline\n", "description": "☃ 🎉 \u0001", "owner_id": 1},
                ],
            )
    finally:
        engine.dispose()
    return url


Answer = tuple[int, str | None, bytes]


def _answer(server: LiveServer, method: str, path: str, body: object = None) -> Answer:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("content-type"), response.read()
    finally:
        connection.close()


EXCHANGES: tuple[tuple[str, str, object, int], ...] = (
    ("GET", "/users/1", None, 200),
    ("GET", "/users/2", None, 200),
    ("GET", "/users/3", None, 200),
    ("GET", "/users/99", None, 404),
    ("GET", "/items/", None, 200),
    ("GET", "/items/?skip=2&limit=3", None, 200),
    ("GET", "/items/?skip=0&limit=100", None, 200),
    ("GET", "/items/?skip=500&limit=5", None, 200),
    ("POST", "/users/3/items/", {"title": "  padded  ", "description": None}, 200),
    ("POST", "/users/2/items/", {"title": 'ünï ☃ "q" \\ \n', "description": "é\t🎉"}, 200),
    ("POST", "/users/1/items/", {"title": "no description"}, 200),
    ("POST", "/users/99/items/", {"title": "nobody's"}, 404),
    ("GET", "/users/3", None, 200),
    ("GET", "/users/2", None, 200),
    ("GET", "/items/?limit=1000", None, 200),
)


def test_app_tutorial_and_floors_answer_with_the_same_bytes(tmp_path: Path) -> None:
    answers: dict[str, list[Answer]] = {}
    with ExitStack() as stack:
        for name, app in SERVERS.items():
            env = {
                "DATABASE_URL": _seed(tmp_path / f"{name.replace(' ', '-')}.db"),
                "MIGRATE_ON_STARTUP": "false",
            }
            server = stack.enter_context(LiveServer(env, app=app, ready_path="/users/1"))
            answers[name] = [_answer(server, m, p, b) for m, p, b, _ in EXCHANGES]
    app_answers = answers["app"]
    assert [a[0] for a in app_answers] == [status for *_, status in EXCHANGES]
    assert all(a[1] == "application/json" for a in app_answers)
    assert b'"is_active":false' in app_answers[1][2]
    assert json.loads(app_answers[-1][2])[-1]["title"] == "no description"
    for name in ("tutorial", "framework floor", "floor"):
        for exchange, mine, theirs in zip(EXCHANGES, app_answers, answers[name], strict=True):
            assert theirs == mine, f"{name} differs on {exchange[:2]}"
