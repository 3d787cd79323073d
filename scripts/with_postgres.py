#!/usr/bin/env python3
"""Run a command against a throwaway PostgreSQL server; standard library only.

    python scripts/with_postgres.py .venv/bin/pytest
    python scripts/with_postgres.py --export DATABASE_URL -- .venv/bin/app serve

A fresh cluster is created with initdb in a temporary directory, started with pg_ctl on a
free port of 127.0.0.1 (password authentication, no other interface), and the command runs
with ``TEST_DATABASE_URL`` set to a superuser URL of the ``postgres`` database. Each
``--export VAR`` also sets ``VAR`` to the URL of an empty application database (``--database``,
default ``app``). The script exits with the command's exit code and always stops the server
and removes the directory, also on Ctrl-C, SIGTERM and SIGHUP.

PostgreSQL refuses to run as root: when started by root, initdb, postgres and pg_ctl run as
the unprivileged OS user ``postgres`` (created when missing), switched to by subprocess's
``user``/``group`` like setpriv would; otherwise they run as the current user.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

PROG = "with_postgres"
OS_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# After a signal the command gets this long to exit by itself, then SIGTERM, then SIGKILL.
GRACE_S = 3.0
KILL_AFTER_S = 15.0
SERVER_OPTIONS = {
    "listen_addresses": HOST,
    "max_connections": "300",
    # A throwaway cluster: durability buys nothing, and tests create many databases.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_connections": "off",
}


class SignalledError(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Server:
    bindir: str
    root: str
    port: int
    password: str
    user: pwd.struct_passwd | None

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "server.log")

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def find_bindir(explicit: str | None) -> str:
    """The first directory holding initdb, pg_ctl and postgres."""
    if explicit:
        candidates = [explicit]
    else:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
        candidates = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", *versions]
    for directory in candidates:
        if directory and all(
            os.access(os.path.join(directory, name), os.X_OK)
            for name in ("initdb", "pg_ctl", "postgres")
        ):
            return directory
    raise SystemExit(
        f"{PROG}: no initdb, pg_ctl and postgres found on PATH, in /usr/local/bin or in "
        "/usr/lib/postgresql/*/bin; install PostgreSQL or pass --bindir"
    )


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def _server_user() -> pwd.struct_passwd | None:
    """The OS user that runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        pass
    _log(f"creating the OS user {OS_USER!r} (PostgreSQL refuses to run as root)")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f"cannot create the OS user {OS_USER!r}: {error}") from None
    return pwd.getpwnam(OS_USER)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user(server: Server, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start a PostgreSQL binary as the server's OS user, in the server's directory."""
    user = server.user
    identity: dict[str, Any] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    if user is not None:
        identity = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env.update(HOME=server.root, USER=user.pw_name, LOGNAME=user.pw_name)
    return subprocess.Popen(
        [os.path.join(server.bindir, args[0]), *args[1:]],
        cwd=server.root,
        env=env,
        text=True,
        **identity,
        **kwargs,
    )


def _run(server: Server, args: Sequence[str], *, stdin: str | None = None) -> None:
    process = _as_server_user(
        server,
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own session: a Ctrl-C in the terminal reaches the command, not the server,
        # which is stopped cleanly afterwards.
        start_new_session=True,
    )
    try:
        # pg_ctl's own --timeout comes first.
        output, _ = process.communicate(stdin, timeout=START_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise RuntimeError(f"{args[0]} did not finish in time") from None
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({process.returncode}):\n{output.strip()}")


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


def _wait_until_accepting(server: Server) -> None:
    """pg_ctl -w waited for the "ready" status; also prove the TCP port answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection((HOST, server.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no connection on port {server.port}") from None
            time.sleep(0.05)


def _initdb(server: Server) -> None:
    pwfile = os.path.join(server.root, "pwfile")
    with open(pwfile, "w", encoding="utf-8") as f:
        f.write(server.password + "\n")
    if server.user is not None:
        os.chown(pwfile, server.user.pw_uid, server.user.pw_gid)
    try:
        _run(
            server,
            [
                "initdb",
                "--pgdata", server.data,
                "--username", SUPERUSER,
                "--pwfile", pwfile,
                "--auth", "scram-sha-256",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
            ],
        )  # fmt: skip
    finally:
        os.unlink(pwfile)


def _create_database(server: Server, name: str) -> None:
    """CREATE DATABASE in single-user mode: no client library needed."""
    _run(
        server,
        ["postgres", "--single", "-D", server.data, "postgres"],
        stdin=f'CREATE DATABASE "{name}";\n',
    )


def _start(server: Server) -> bool:
    """Start the server; False when the port was taken by someone else meanwhile."""
    options = {**SERVER_OPTIONS, "port": str(server.port), "unix_socket_directories": server.root}
    if os.path.exists(server.log):
        os.unlink(server.log)  # the previous attempt's
    try:
        _run(
            server,
            [
                "pg_ctl", "start", "--wait", f"--timeout={START_TIMEOUT_S}",
                "--pgdata", server.data, "--log", server.log,
                "--options", " ".join(f"-c {k}={v}" for k, v in options.items()),
            ],
        )  # fmt: skip
    except RuntimeError:
        log = _tail(server.log)
        if "could not bind" in log:
            return False
        raise RuntimeError(f"pg_ctl start failed; server log:\n{log}") from None
    _wait_until_accepting(server)
    return True


def _stop(server: Server) -> None:
    if not os.path.exists(os.path.join(server.data, "postmaster.pid")):
        return
    for mode in ("fast", "immediate"):
        try:
            _run(
                server,
                ["pg_ctl", "stop", "--pgdata", server.data, "--mode", mode, "--wait",
                 f"--timeout={STOP_TIMEOUT_S}"],
            )  # fmt: skip
            return
        except RuntimeError as error:
            _log(f"pg_ctl stop --mode {mode} failed: {error}")


@contextmanager
def postgres_server(
    bindir: str, port: int | None, databases: Sequence[str], keep: bool
) -> Iterator[Server]:
    """A running throwaway server; stopped and deleted on exit."""
    user = _server_user()
    root = tempfile.mkdtemp(prefix=f"{PROG}-")
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = Server(bindir, root, port or _free_port(), secrets.token_urlsafe(18), user)
    try:
        _initdb(server)
        for name in databases:
            _check_interrupted()
            _create_database(server, name)
        for attempt in range(5):
            _check_interrupted()
            if _start(server):
                break
            if port is not None or attempt == 4:
                raise RuntimeError(f"port {server.port} is in use")
            server = Server(bindir, root, _free_port(), server.password, user)
        yield server
    finally:
        _stop(server)
        if keep:
            _log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


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
        epilog="CMD sees TEST_DATABASE_URL (superuser, database postgres) and every --export VAR.",
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
    parser.add_argument("--port", type=int, help="listen on this port (default: a free one)")
    parser.add_argument("--bindir", help="where initdb, pg_ctl and postgres are (default: search)")
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
    bindir = find_bindir(args.bindir)
    # Signals are recorded and acted on between steps, so that a server being created is
    # always either stopped or never started when we exit.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _record)
    try:
        databases = [args.database] if args.export else []
        with postgres_server(bindir, args.port, databases, args.keep) as server:
            env = dict(os.environ, TEST_DATABASE_URL=server.url("postgres"))
            env.update({var: server.url(args.database) for var in args.export})
            shown = server.url(args.database if args.export else "postgres")
            _log(f"PostgreSQL from {bindir} is ready at {shown.replace(server.password, '***')}")
            return run_command(command, env)
    except SignalledError as signalled:
        return 128 + signalled.signum
    except RuntimeError as error:
        _log(str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
