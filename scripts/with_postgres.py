#!/usr/bin/env python3
"""Run a command against a throwaway PostgreSQL server; standard library only.

    python scripts/with_postgres.py .venv/bin/pytest
    python scripts/with_postgres.py --export DATABASE_URL -- .venv/bin/app serve
    python scripts/with_postgres.py --pgbouncer --export DATABASE_URL --export-via-pgbouncer \
        -- env DB_PREPARE_THRESHOLD=none .venv/bin/app serve

A fresh cluster is created with initdb in a temporary directory, started on a free port of
127.0.0.1 (password authentication, no other interface), and the command runs with
``TEST_DATABASE_URL`` set to a superuser URL of the ``postgres`` database. Each ``--export VAR``
also sets ``VAR`` to the URL of an empty application database (``--database``, default
``app``). ``--port`` picks the server's port, ``--bindir`` where initdb and postgres are, and
``--keep`` keeps the directories afterwards for debugging.

``--pgbouncer`` also starts PgBouncer (transaction pooling, any database) in front of the
server and sets ``TEST_PGBOUNCER_URL`` to the superuser URL of ``postgres`` through it; the
``--export`` URLs stay direct unless ``--export-via-pgbouncer`` (which implies
``--pgbouncer``) points them through PgBouncer. ``--replica`` also starts a streaming hot
standby of the server and sets ``TEST_REPLICA_URL`` to the superuser URL of ``postgres`` on it;
``--replica-delay S`` (which implies ``--replica``) makes it apply the WAL S seconds late
(``recovery_min_apply_delay``), and each ``--export-replica VAR`` sets ``VAR`` to the
application database's URL on it. With both kinds of export, the app runs with a replica:

    python scripts/with_postgres.py --replica-delay 2 --export DATABASE_URL \
        --export-replica DATABASE_REPLICA_URLS -- env MIGRATE_ON_STARTUP=true .venv/bin/app serve

The script exits with the command's exit code and always stops every server and removes its
directory, also on Ctrl-C, SIGTERM and SIGHUP: those reach the command, which gets 3 s to exit
by itself, then SIGTERM, and SIGKILL 15 s later. The URLs it prints hide the password.

The servers come from ``app.testing.postgres``: when root runs the script, they run as the
unprivileged OS user ``postgres`` (created when missing), since PostgreSQL and PgBouncer refuse
to run as root.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from types import FrameType

# Plain python3 from the project root has neither the venv nor the project on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from app.testing.postgres import PgBouncer, PostgresServer, find_bindir

PROG = "with_postgres"
# After a signal the command gets this long to exit by itself, then SIGTERM, then SIGKILL.
GRACE_S = 3.0
KILL_AFTER_S = 15.0


class SignalledError(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


_received: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def _check_interrupted() -> None:
    if _received:
        raise SignalledError(_received[0])


def run_command(command: Sequence[str], env: dict[str, str]) -> int:
    """Run the command to completion; signals we receive reach it, with bounded escalation."""
    _check_interrupted()
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as error:
        _log(f"cannot run {command[0]}: {error.strerror}")
        return 127
    signalled_at: float | None = None
    escalated: set[int] = set()
    while True:
        try:
            code = child.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        if not _received:
            continue
        if signalled_at is None:
            signalled_at = time.monotonic()
            # A terminal's Ctrl-C has already reached the command (same process group).
            if _received[0] != signal.SIGINT:
                child.send_signal(_received[0])
        waited = time.monotonic() - signalled_at
        for after, signum in ((GRACE_S, signal.SIGTERM), (KILL_AFTER_S, signal.SIGKILL)):
            if waited > after and signum not in escalated:
                escalated.add(signum)
                child.send_signal(signum)
    return 128 - code if code < 0 else code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="with_postgres.py",
        description="Run CMD against a throwaway PostgreSQL server on 127.0.0.1.",
        epilog="CMD sees TEST_DATABASE_URL (superuser, database postgres), every --export VAR, "
        "and TEST_PGBOUNCER_URL and TEST_REPLICA_URL with --pgbouncer and --replica.",
    )
    parser.add_argument(
        "--export",
        metavar="VAR",
        action="append",
        default=[],
        help="also set VAR (repeatable) to the URL of the application database",
    )
    parser.add_argument(
        "--database",
        metavar="NAME",
        default="app",
        help="the application database created for --export (default: %(default)s)",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="also start PgBouncer in front of the server; CMD gets TEST_PGBOUNCER_URL",
    )
    parser.add_argument(
        "--export-via-pgbouncer",
        action="store_true",
        help="point the --export URLs through PgBouncer (implies --pgbouncer)",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="also start a streaming standby; CMD gets TEST_REPLICA_URL",
    )
    parser.add_argument(
        "--replica-delay",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="the standby applies the WAL this late (implies --replica)",
    )
    parser.add_argument(
        "--export-replica",
        metavar="VAR",
        action="append",
        default=[],
        help="also set VAR (repeatable) to the application database's URL on the standby "
        "(implies --replica)",
    )
    parser.add_argument("--port", type=int, help="listen on this port (default: a free one)")
    parser.add_argument("--bindir", help="where initdb and postgres are (default: search)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the data directory afterwards (debugging)"
    )
    parser.add_argument("command", metavar="CMD", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _parser().error("CMD is required")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.database):
        _parser().error("--database must be a plain identifier")
    # Signals are recorded and acted on between steps, so that a server being created is
    # always either stopped or never started when we exit.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _record)
    try:
        bindir = find_bindir(args.bindir)
        databases = [args.database] if args.export or args.export_replica else []
        with ExitStack() as servers:
            server = servers.enter_context(
                PostgresServer.create(bindir, args.port, databases, keep=args.keep)
            )
            env = dict(os.environ, TEST_DATABASE_URL=server.url())
            shown = [f"PostgreSQL from {bindir} is ready at {_masked(server, databases)}"]
            exported: PostgresServer | PgBouncer = server
            if args.pgbouncer or args.export_via_pgbouncer:
                _check_interrupted()
                bouncer = servers.enter_context(PgBouncer(server))
                env["TEST_PGBOUNCER_URL"] = bouncer.url()
                version = ".".join(map(str, bouncer.version))
                shown.append(f"PgBouncer {version} is ready at {_masked(bouncer, databases)}")
                if args.export_via_pgbouncer:
                    exported = bouncer
            if args.replica or args.replica_delay > 0 or args.export_replica:
                _check_interrupted()
                replica = servers.enter_context(server.standby(args.replica_delay))
                env["TEST_REPLICA_URL"] = replica.url()
                env.update({var: replica.url(args.database) for var in args.export_replica})
                late = f" ({args.replica_delay:g} s behind)" if args.replica_delay > 0 else ""
                shown.append(
                    f"the streaming standby{late} is ready at {_masked(replica, databases)}"
                )
            env.update({var: exported.url(args.database) for var in args.export})
            for line in shown:
                _log(line)
            return run_command(command, env)
    except SignalledError as signalled:
        return 128 + signalled.signum
    except RuntimeError as error:
        _log(str(error))
        return 1


def _masked(server: PostgresServer | PgBouncer, databases: Sequence[str]) -> str:
    return server.url(*databases[:1]).replace(server.password, "***")


if __name__ == "__main__":
    sys.exit(main())
