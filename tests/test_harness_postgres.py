"""app.testing.postgres against real processes: standbys, restarts, crashes and PgBouncer."""

import glob
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import LiteralString

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from app.testing.postgres import PgBouncer, PostgresServer, missing_binaries

SHARES_SERVERS = True  # module-scoped: under xdist, its tests run on one worker

DEADLINE_S = 30.0
APPLY_DELAY_S = 2.0


@pytest.fixture(scope="module")
def primary() -> Iterator[PostgresServer]:
    missing = missing_binaries()
    assert not missing, f"install PostgreSQL 15 and PgBouncer; missing: {', '.join(missing)}"
    with PostgresServer.create() as server:
        _query(server.url(), "CREATE TABLE notes (id serial PRIMARY KEY, note text NOT NULL)")
        yield server


@pytest.fixture(scope="module")
def standby(primary: PostgresServer) -> Iterator[PostgresServer]:
    with primary.standby() as server:
        yield server


@pytest.fixture(scope="module")
def delayed_standby(primary: PostgresServer) -> Iterator[PostgresServer]:
    with primary.standby(apply_delay=APPLY_DELAY_S) as server:
        yield server


@pytest.fixture(scope="module")
def bouncer(primary: PostgresServer) -> Iterator[PgBouncer]:
    with PgBouncer(primary) as pgbouncer:
        yield pgbouncer


def _query(url: str, query: LiteralString, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def _write(server: PostgresServer) -> str:
    note = uuid.uuid4().hex
    _query(server.url(), "INSERT INTO notes (note) VALUES (%s)", note)
    return note


def _has(server: PostgresServer, note: str) -> bool:
    return bool(_query(server.url(), "SELECT 1 FROM notes WHERE note = %s", note))


def _eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds; server restarts in between count as "not yet"."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if check():
                return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE_S:.0f} s")
        time.sleep(0.1)


def _processes_of(pid: int | None) -> list[int]:
    """``pid`` and its children."""
    assert pid is not None
    found = [pid]
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat, encoding="utf-8", errors="replace") as f:
                parent = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue  # exited meanwhile
        if parent == str(pid):
            found.append(int(stat.split("/")[2]))
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_standby_streams_writes_and_refuses_its_own(
    primary: PostgresServer, standby: PostgresServer
) -> None:
    note = _write(primary)
    _eventually(lambda: _has(standby, note), "the write on the standby")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        _query(standby.url(), "INSERT INTO notes (note) VALUES ('on the standby')")
    assert _query(standby.url(), "SELECT pg_is_in_recovery()") == [(True,)]


def test_delayed_standby_applies_a_commit_only_after_the_delay(
    primary: PostgresServer, delayed_standby: PostgresServer
) -> None:
    note = uuid.uuid4().hex
    with (
        psycopg.connect(primary.url(), autocommit=True) as writer,
        psycopg.connect(delayed_standby.url(), autocommit=True) as reader,
    ):
        writer.execute("INSERT INTO notes (note) VALUES (%s)", (note,))
        committed = time.monotonic()
        seen = reader.execute("SELECT count(*) FROM notes WHERE note = %s", (note,)).fetchone()
        checked_after = time.monotonic() - committed
        lsn = writer.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert seen == (0,), f"visible {checked_after:.2f} s after the commit, delay {APPLY_DELAY_S} s"
    _eventually(lambda: _has(delayed_standby, note), "the write on the delayed standby")
    assert lsn is not None
    _eventually(
        lambda: (
            _query(delayed_standby.url(), "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", lsn[0])
            == [(True,)]
        ),
        "the delayed standby's replay reaching the primary's WAL position",
    )


def test_pgbouncer_serves_and_reaches_databases_created_after_it_started(
    primary: PostgresServer, bouncer: PgBouncer
) -> None:
    assert _query(bouncer.url(), "SELECT 1") == [(1,)]
    name = f"late_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    assert _query(bouncer.url(name), "SELECT current_database()") == [(name,)]


def _repeat_across_transactions(conn: psycopg.Connection[TupleRow], url: str) -> None:
    """One statement 10 times on ``conn``, a transaction each, on alternating server connections."""
    with psycopg.connect(url) as holder:
        for i in range(10):
            if i % 2:
                # Its open transaction pins the server connection that conn just released.
                holder.execute("SELECT 1")
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            conn.commit()
            holder.rollback()


def test_psycopg_prepared_statements_break_behind_transaction_pooling(bouncer: PgBouncer) -> None:
    """Why the app needs DB_PREPARE_THRESHOLD=none behind PgBouncer."""
    with (
        psycopg.connect(bouncer.url()) as conn,
        pytest.raises(psycopg.errors.InvalidSqlStatementName, match='"_pg3_0" does not exist'),
    ):
        _repeat_across_transactions(conn, bouncer.url())


def test_unprepared_statements_work_behind_transaction_pooling(bouncer: PgBouncer) -> None:
    with psycopg.connect(bouncer.url(), prepare_threshold=None) as conn:
        _repeat_across_transactions(conn, bouncer.url())


def test_standby_stopped_and_started_again_catches_up(
    primary: PostgresServer, standby: PostgresServer
) -> None:
    standby.stop()
    assert not standby.is_running()
    note = _write(primary)
    assert _has(primary, note)
    standby.start()
    _eventually(lambda: _has(standby, note), "the write made while the standby was down")


def test_primary_stop_and_start_keeps_data_port_and_streaming(
    primary: PostgresServer, standby: PostgresServer
) -> None:
    before = _write(primary)
    port = primary.port
    primary.stop()
    assert not primary.is_running()
    primary.start()
    assert primary.port == port
    assert _has(primary, before)
    after = _write(primary)
    _eventually(lambda: _has(standby, after), "a write after the restart on the standby")


def test_primary_killed_recovers_committed_data(
    primary: PostgresServer, standby: PostgresServer
) -> None:
    note = uuid.uuid4().hex
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        # The cluster's synchronous_commit=off may lose the last commits in a crash, by design.
        conn.execute("SET synchronous_commit = on")
        conn.execute("INSERT INTO notes (note) VALUES (%s)", (note,))
    processes = _processes_of(primary.pid)
    primary.kill()
    assert not any(map(_running, processes))
    primary.start()
    assert _has(primary, note)
    later = _write(primary)
    _eventually(lambda: _has(standby, later), "a write after the crash on the standby")


def test_pgbouncer_survives_a_server_restart(primary: PostgresServer, bouncer: PgBouncer) -> None:
    assert _query(bouncer.url(), "SELECT 1") == [(1,)]
    primary.restart()
    _eventually(lambda: _query(bouncer.url(), "SELECT 1") == [(1,)], "PgBouncer after a restart")
    assert bouncer.is_running()


def test_close_leaves_no_process_and_no_directory(primary: PostgresServer) -> None:
    with primary.standby() as standby, PgBouncer(standby) as bouncer:
        processes = [*_processes_of(standby.pid), *_processes_of(bouncer.pid)]
        roots = [standby.root, bouncer.root]
        bouncer.close()
        standby.close()
    assert [pid for pid in processes if _running(pid)] == []
    assert [root for root in roots if os.path.exists(root)] == []


def test_failed_start_raises_with_the_log_and_cleans_up(primary: PostgresServer) -> None:
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "pgbouncer-*")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="Address already in use"):
            PgBouncer(primary, port=taken.getsockname()[1])
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "pgbouncer-*"))) == before


CHECK_REPLICA = """
import os, psycopg
with psycopg.connect(os.environ["APP_URL"], autocommit=True) as primary:
    primary.execute("CREATE TABLE notes (note text)")
    lsn = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
with psycopg.connect(os.environ["APP_REPLICA_URL"], autocommit=True) as replica:
    print(replica.execute("SELECT pg_is_in_recovery(), current_database()").fetchone())
    print(replica.execute("SHOW recovery_min_apply_delay").fetchone())
    print(replica.execute("SELECT pg_last_wal_replay_lsn() >= %s", lsn).fetchone())
"""


def test_with_postgres_exports_a_late_replica_of_the_app_database() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "scripts", "with_postgres.py")
    command = [sys.executable, script, "--replica-delay", "2", "--export", "APP_URL"]
    command += ["--export-replica", "APP_REPLICA_URL", "--", sys.executable, "-c", CHECK_REPLICA]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    # A hot standby of the app database, applying 2 s late: the table is not there yet.
    assert result.stdout.splitlines() == ["(True, 'app')", "('2s',)", "(False,)"]
    assert "the streaming standby (2 s behind) is ready at" in result.stderr
    assert "***" in result.stderr
