"""Streaming hot standbys: their settings, the base backup that makes one, the replay check."""

from __future__ import annotations

import pwd
from collections.abc import Mapping

from app.testing.postgres.binaries import tool
from app.testing.postgres.daemon import HOST, SUPERUSER, run

__all__ = ["STANDBY_OPTIONS", "base_backup", "has_replayed", "passfile_line", "standby_options"]

STANDBY_OPTIONS = {
    "hot_standby": "on",
    # The default 5 s between reconnection attempts would dominate tests that restart a primary.
    "wal_retrieve_retry_interval": "1s",
}


def standby_options(primary: Mapping[str, str], apply_delay: float) -> dict[str, str]:
    """A standby's server settings: its primary's, hot, ``apply_delay`` seconds behind."""
    options = {**primary, **STANDBY_OPTIONS}
    if apply_delay > 0:
        options["recovery_min_apply_delay"] = f"{round(apply_delay * 1000)}ms"
    return options


def base_backup(
    bindir: str,
    os_user: pwd.struct_passwd | None,
    *,
    primary_port: int,
    passfile: str,
    data: str,
    cwd: str,
) -> None:
    """pg_basebackup -R of the primary on ``primary_port`` into ``data``; ``passfile`` holds
    the superuser's password and must stay: ``primary_conninfo`` names it for every
    reconnection."""
    run(
        os_user,
        [
            tool(bindir, "pg_basebackup"),
            "--pgdata", data,
            "--host", HOST, "--port", str(primary_port), "--username", SUPERUSER,
            "--no-password", "--write-recovery-conf",
            "--checkpoint=fast", "--wal-method=stream", "--no-sync",
        ],
        cwd=cwd,
        env={"PGPASSFILE": passfile},
    )  # fmt: skip


def has_replayed(primary_url: str, standby_url: str) -> bool:
    """Whether the standby has replayed every commit the primary has made so far.

    The primary's insert position, not ``pg_current_wal_lsn()``: with
    ``synchronous_commit=off`` (the clusters' SERVER_OPTIONS) the WAL written so far may
    end before the last commit records."""
    import psycopg  # not at the top: scripts/with_postgres.py runs without the venv

    with psycopg.connect(primary_url, autocommit=True, connect_timeout=10) as connection:
        row = connection.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
    with psycopg.connect(standby_url, autocommit=True, connect_timeout=10) as connection:
        reached = connection.execute("SELECT pg_last_wal_replay_lsn() >= %s", row).fetchone()
    return bool(reached and reached[0])


def passfile_line(port: int, password: str) -> str:
    return f"{HOST}:{port}:*:{SUPERUSER}:{password}\n"
