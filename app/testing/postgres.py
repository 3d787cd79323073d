"""Throwaway PostgreSQL clusters, streaming standbys and PgBouncer for tests; stdlib only.

PostgreSQL and PgBouncer refuse to run as root: when root uses this module, their binaries
run as the unprivileged OS user ``postgres`` (created when missing), switched to by
subprocess's ``user``/``group`` like setpriv would; otherwise they run as the current user.
Every process gets its own session, so a Ctrl-C in the terminal reaches the caller only,
which then stops them cleanly.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
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
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Literal, Self

__all__ = [
    "HOST",
    "SUPERUSER",
    "PgBouncer",
    "PostgresServer",
    "StopMode",
    "find_bindir",
    "find_pgbouncer",
    "missing_binaries",
]

HOST = "127.0.0.1"
SUPERUSER = "postgres"
OS_USER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 120.0
StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_SERVER_BINARIES = ("initdb", "postgres")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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
REPLICATION_OPTIONS = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    # Lets a standby that was stopped for a while catch up without a replication slot.
    "wal_keep_size": "256MB",
}
_NO_REPLICATION = {"wal_level": "minimal", "max_wal_senders": "0"}
STANDBY_OPTIONS = {
    "hot_standby": "on",
    # The default 5 s between reconnection attempts would dominate tests that restart a primary.
    "wal_retrieve_retry_interval": "1s",
}


def find_bindir(explicit: str | None = None) -> str:
    """The first directory holding initdb and postgres: PATH, /usr/local/bin, then Debian's."""
    if explicit:
        candidates = [explicit]
    else:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
        candidates = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", *versions]
    for directory in candidates:
        if directory and all(_executable(directory, name) for name in _SERVER_BINARIES):
            return directory
    where = explicit or "PATH, /usr/local/bin or /usr/lib/postgresql/*/bin"
    raise RuntimeError(f"no initdb and postgres found in {where}; install PostgreSQL")


def find_pgbouncer(explicit: str | None = None) -> str:
    """The pgbouncer binary: ``explicit``, on PATH, or Debian's /usr/sbin/pgbouncer."""
    candidates = [explicit] if explicit else [shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"no pgbouncer at {explicit}" if explicit else "no pgbouncer on PATH or in /usr/sbin"
    )


def missing_binaries(bindir: str | None = None) -> list[str]:
    """What this module needs and cannot find; empty when everything is there."""
    missing: list[str] = []
    try:
        directory = find_bindir(bindir)
    except RuntimeError:
        missing.extend(_SERVER_BINARIES)
    else:
        try:
            _tool(directory, "pg_basebackup")
        except RuntimeError:
            missing.append("pg_basebackup")
    try:
        find_pgbouncer()
    except RuntimeError:
        missing.append("pgbouncer")
    return missing


class _Daemon(abc.ABC):
    """What PostgresServer and PgBouncer share: one process on a port, a directory, a log."""

    _LOG_NAME: str
    """The log's file name in ``root``."""
    _NOUN: str
    """What the messages call the process."""

    def __init__(
        self,
        *,
        root: str,
        port: int,
        password: str,
        os_user: pwd.struct_passwd | None,
        keep: bool,
    ) -> None:
        self.root = root
        self.port = port
        self.password = password
        self.os_user = os_user
        self.keep = keep
        self._process: subprocess.Popen[str] | None = None
        self._closed = False
        _OPEN.add(self)

    @property
    def log(self) -> str:
        return os.path.join(self.root, self._LOG_NAME)

    @property
    def pid(self) -> int | None:
        """The process's pid while it runs."""
        return self._process.pid if self.is_running() and self._process else None

    def url(self, database: str = "postgres") -> str:
        """A superuser URL of ``database`` on this port, password included."""
        return f"postgresql://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    def is_running(self) -> bool:
        """Whether the process this object started is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start on its port and wait until it serves (accepts connections, or listens)."""
        if self._closed:
            raise RuntimeError(f"the {self._NOUN} in {self.root} is closed")
        if not self.is_running() and not self._start():
            raise RuntimeError(f"port {self.port} is in use; {self._NOUN} log:\n{_tail(self.log)}")

    @abc.abstractmethod
    def stop(self) -> None:
        """Shut the process down; nothing when it does not run."""

    def close(self) -> None:
        """Stop the process and delete its directory (unless ``keep``); idempotent."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        try:
            self.stop()
        finally:
            _remove(self.root, self.keep)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _start_on_free_port(self, *, explicit: bool) -> None:
        """Start, on other free ports when this one is taken (unless it was ``explicit``)."""
        for attempt in range(5):
            if self._start():
                return
            if explicit or attempt == 4:
                raise RuntimeError(self._port_taken())
            self.port = _free_port()

    def _port_taken(self) -> str:
        """The message when the tries of _start_on_free_port ran out."""
        return f"port {self.port} is in use"

    @abc.abstractmethod
    def _start(self) -> bool:
        """Start the process; False when its port was taken by someone else meanwhile."""


class PostgresServer(_Daemon):
    """A throwaway cluster in a temporary directory, on 127.0.0.1; make one with create()."""

    _LOG_NAME = "server.log"
    _NOUN = "server"

    def __init__(
        self,
        *,
        bindir: str,
        root: str,
        port: int,
        password: str,
        os_user: pwd.struct_passwd | None,
        options: Mapping[str, str],
        keep: bool = False,
    ) -> None:
        super().__init__(root=root, port=port, password=password, os_user=os_user, keep=keep)
        self.bindir = bindir
        self.options = dict(options)

    @classmethod
    def create(
        cls,
        bindir: str | None = None,
        port: int | None = None,
        databases: Sequence[str] = (),
        *,
        wal_level_replica: bool = True,
        keep: bool = False,
    ) -> PostgresServer:
        """initdb a new cluster, create ``databases`` in it and start it."""
        for name in databases:
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"database name {name!r} is not a plain identifier")
        bindir = find_bindir(bindir)
        os_user = _server_user()
        replication = REPLICATION_OPTIONS if wal_level_replica else _NO_REPLICATION
        server = cls(
            bindir=bindir,
            root=_make_root(os_user, "pg-"),
            port=port or _free_port(),
            password=secrets.token_urlsafe(18),
            os_user=os_user,
            options={**SERVER_OPTIONS, **replication},
            keep=keep,
        )
        try:
            server._initdb()
            for name in databases:
                server._create_database(name)
            server._start_on_free_port(explicit=port is not None)
        except BaseException:
            server.close()
            raise
        return server

    def standby(self, apply_delay: float = 0, *, port: int | None = None) -> PostgresServer:
        """A new streaming hot standby of this (running) server, from pg_basebackup -R."""
        if not self.is_running():
            raise RuntimeError(f"the primary on port {self.port} is not running")
        basebackup = _tool(self.bindir, "pg_basebackup")
        options = {**self.options, **STANDBY_OPTIONS}
        if apply_delay > 0:
            options["recovery_min_apply_delay"] = f"{round(apply_delay * 1000)}ms"
        standby = PostgresServer(
            bindir=self.bindir,
            root=_make_root(self.os_user, "pg-standby-"),
            port=port or _free_port(),
            password=self.password,
            os_user=self.os_user,
            options=options,
            keep=self.keep,
        )
        try:
            # Stays in place: the standby's primary_conninfo names it for every reconnection.
            passfile = os.path.join(standby.root, "pgpass")
            _write_private(passfile, f"{HOST}:{self.port}:*:{SUPERUSER}:{self.password}\n", self)
            _run(
                self.os_user,
                [
                    basebackup,
                    "--pgdata", standby.data,
                    "--host", HOST, "--port", str(self.port), "--username", SUPERUSER,
                    "--no-password", "--write-recovery-conf",
                    "--checkpoint=fast", "--wal-method=stream", "--no-sync",
                ],
                cwd=standby.root,
                env={"PGPASSFILE": passfile},
            )  # fmt: skip
            standby._start_on_free_port(explicit=port is not None)
        except BaseException:
            standby.close()
            raise
        return standby

    def has_replayed(self, primary: PostgresServer) -> bool:
        """Whether this standby has replayed every commit ``primary`` has made so far.

        The primary's insert position, not ``pg_current_wal_lsn()``: with
        ``synchronous_commit=off`` (``SERVER_OPTIONS``) the WAL written so far may end
        before the last commit records."""
        import psycopg  # not at the top: scripts/with_postgres.py runs without the venv

        with psycopg.connect(primary.url(), autocommit=True, connect_timeout=10) as connection:
            row = connection.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            reached = connection.execute("SELECT pg_last_wal_replay_lsn() >= %s", row).fetchone()
        return bool(reached and reached[0])

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut down in ``mode``, escalating to immediate and then SIGKILL if it takes too long."""
        process = self._process
        if process is None:
            return
        children = _children(process.pid)
        for signum in (_STOP_SIGNALS[mode], signal.SIGQUIT):
            if process.poll() is None:
                process.send_signal(signum)
            try:
                process.wait(STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                _warn(f"postgres on port {self.port} did not stop after {signum.name}")
        else:
            process.kill()
            process.wait()
        self._process = None
        _wait_gone(children)

    def kill(self) -> None:
        """SIGKILL the postmaster, like a crash; start() afterwards runs crash recovery."""
        process = self._process
        if process is None:
            return
        children = _children(process.pid)
        process.kill()
        process.wait()
        self._process = None
        # The next postmaster refuses to start while they still hold the old shared memory.
        _wait_gone(children)

    def restart(self) -> None:
        """stop() then start(), on the same port."""
        self.stop()
        self.start()

    def _initdb(self) -> None:
        pwfile = os.path.join(self.root, "pwfile")
        _write_private(pwfile, self.password + "\n", self)
        try:
            _run(
                self.os_user,
                [
                    os.path.join(self.bindir, "initdb"),
                    "--pgdata", self.data,
                    "--username", SUPERUSER,
                    "--pwfile", pwfile,
                    "--auth", "scram-sha-256",
                    "--encoding", "UTF8",
                    "--locale", "C",
                    "--no-sync",
                ],
                cwd=self.root,
            )  # fmt: skip
        finally:
            os.unlink(pwfile)
        hba = os.path.join(self.data, "pg_hba.conf")
        with open(hba, encoding="utf-8") as f:
            lines = [line.split() for line in f]
        if ["host", "replication", "all", f"{HOST}/32", "scram-sha-256"] not in lines:
            with open(hba, "a", encoding="utf-8") as f:
                f.write(f"host replication all {HOST}/32 scram-sha-256\n")

    def _create_database(self, name: str) -> None:
        """CREATE DATABASE in single-user mode: no client library needed."""
        _run(
            self.os_user,
            [os.path.join(self.bindir, "postgres"), "--single", "-D", self.data, "postgres"],
            cwd=self.root,
            stdin=f'CREATE DATABASE "{name}";\n',
        )

    def _start(self) -> bool:
        """Start the postmaster; False when its port was taken by someone else meanwhile."""
        offset = _size(self.log)
        options = {**self.options, "port": str(self.port), "unix_socket_directories": self.root}
        args = [os.path.join(self.bindir, "postgres"), "-D", self.data]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        # Our own child rather than pg_ctl's daemon: kill() can reap it, and no zombie of it
        # blocks the next start when nobody reaps orphans.
        with open(self.log, "a", encoding="utf-8") as log:
            process = _popen(self.os_user, args, cwd=self.root, stdout=log)
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepting(process.pid):
            code = process.poll()
            if code is not None:
                self._process = None
                log_tail = _tail(self.log, offset)
                if "could not bind" in log_tail or "could not create any TCP/IP" in log_tail:
                    return False
                raise RuntimeError(
                    f"postgres exited with status {code} while starting; server log:\n{log_tail}"
                )
            if time.monotonic() > deadline:
                self.stop("immediate")
                raise RuntimeError(
                    f"postgres on port {self.port} did not accept connections within "
                    f"{START_TIMEOUT_S:.0f} s; server log:\n{_tail(self.log, offset)}"
                )
            time.sleep(0.05)
        return True

    def _accepting(self, pid: int) -> bool:
        """Our postmaster wrote "ready" (or "standby") in its pid file and the port answers."""
        try:
            with open(os.path.join(self.data, "postmaster.pid"), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[0].strip() != str(pid):
            return False
        if lines[7].strip() not in ("ready", "standby"):
            return False
        try:
            with socket.create_connection((HOST, self.port), timeout=1):
                return True
        except OSError:
            return False


class PgBouncer(_Daemon):
    """PgBouncer in front of a PostgresServer on 127.0.0.1; the constructor starts it.

    Its directory is kept, like the server's, when the server's ``keep`` is set.
    """

    _LOG_NAME = "pgbouncer.log"
    _NOUN = "PgBouncer"

    def __init__(
        self,
        server: PostgresServer,
        *,
        port: int | None = None,
        pool_mode: Literal["session", "transaction", "statement"] = "transaction",
        default_pool_size: int = 20,
        max_client_conn: int = 500,
        max_prepared_statements: int = 0,
        query_wait_timeout: int = 10,
        binary: str | None = None,
    ) -> None:
        self.server = server
        self.binary = find_pgbouncer(binary)
        self.version = _pgbouncer_version(self.binary)
        if max_prepared_statements and self.version < (1, 21):
            raise RuntimeError(
                f"PgBouncer {_dotted(self.version)} has no max_prepared_statements (1.21+)"
            )
        super().__init__(
            root=_make_root(server.os_user, "pgbouncer-"),
            port=port or _free_port(),
            password=server.password,
            os_user=server.os_user,
            keep=server.keep,
        )
        self.settings = {
            "listen_addr": HOST,
            "unix_socket_dir": "",
            # SCRAM both ways: PgBouncer needs the plain password to log in to the server.
            "auth_type": "scram-sha-256",
            "auth_file": os.path.join(self.root, "userlist.txt"),
            "pool_mode": pool_mode,
            "max_client_conn": str(max_client_conn),
            "default_pool_size": str(default_pool_size),
            # After a server restart, retry the login within a second, not the default 15 s.
            "server_login_retry": "1",
            # While the server is down a query waits this long, not the default 120 s.
            "query_wait_timeout": str(query_wait_timeout),
            "ignore_startup_parameters": "extra_float_digits",
            "log_connections": "0",
            "log_disconnections": "0",
        }
        if self.version >= (1, 21):
            # 1.24 changed the default to 200; 0 keeps named prepared statements unsupported.
            self.settings["max_prepared_statements"] = str(max_prepared_statements)
        try:
            _write_private(self.settings["auth_file"], f'"{SUPERUSER}" "{self.password}"\n', self)
            self._start_on_free_port(explicit=port is not None)
        except BaseException:
            self.close()
            raise

    @property
    def config(self) -> str:
        return os.path.join(self.root, "pgbouncer.ini")

    def stop(self) -> None:
        """Shut down at once (clients are disconnected), SIGKILL if it takes too long."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            # SIGTERM became a shutdown that waits for every client in 1.23; SIGQUIT took over.
            process.send_signal(signal.SIGQUIT if self.version >= (1, 23) else signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _warn(f"PgBouncer on port {self.port} did not stop; killing it")
            process.kill()
            process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL PgBouncer."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _port_taken(self) -> str:
        return f"PgBouncer cannot listen on port {self.port}; its log:\n{_tail(self.log)}"

    def _start(self) -> bool:
        """Start PgBouncer; False when its port was taken by someone else meanwhile."""
        settings = {**self.settings, "listen_port": str(self.port)}
        config = [
            "[databases]",
            # A wildcard, so that databases created after the start are reachable too.
            f"* = host={HOST} port={self.server.port}",
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in settings.items()),
        ]
        _write_private(self.config, "\n".join(config) + "\n", self)
        offset = _size(self.log)
        with open(self.log, "a", encoding="utf-8") as log:
            process = _popen(self.os_user, [self.binary, self.config], cwd=self.root, stdout=log)
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while "process up:" not in _tail(self.log, offset):
            code = process.poll()
            if code is not None:
                self._process = None
                log_tail = _tail(self.log, offset)
                if "Address already in use" in log_tail:
                    return False
                raise RuntimeError(
                    f"pgbouncer exited with status {code} while starting; its log:\n{log_tail}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"pgbouncer did not start within {START_TIMEOUT_S:.0f} s; its log:\n"
                    f"{_tail(self.log, offset)}"
                )
            time.sleep(0.05)
        return True


# Strong references: a server nobody closed still runs, so it is closed when Python exits
# instead of being left behind when its object is collected.
_OPEN: set[_Daemon] = set()


@atexit.register
def _close_forgotten() -> None:
    for resource in list(_OPEN):
        resource.close()


def _warn(message: str) -> None:
    print(f"{__name__}: {message}", file=sys.stderr, flush=True)


def _executable(directory: str, name: str) -> bool:
    return os.access(os.path.join(directory, name), os.X_OK)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _tool(bindir: str, name: str) -> str:
    """A PostgreSQL client binary: in ``bindir``, else beside the real postgres it links to."""
    # /usr/local/bin may hold symlinks to the server binaries only; Debian's /usr/bin
    # pg_basebackup is a wrapper that guesses a version, so we take the matching one.
    for directory in (bindir, os.path.dirname(os.path.realpath(os.path.join(bindir, "postgres")))):
        if _executable(directory, name):
            return os.path.join(directory, name)
    raise RuntimeError(f"no {name} in {bindir} or beside the postgres it links to")


def _pgbouncer_version(binary: str) -> tuple[int, ...]:
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"{binary} --version failed: {error}") from None
    found = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", output)
    if not found:
        raise RuntimeError(f"cannot read the version of {binary} from {output!r}")
    return tuple(int(n) for n in found.groups(default="0"))


def _server_user() -> pwd.struct_passwd | None:
    """The OS user that runs the servers: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        pass
    _warn(f"creating the OS user {OS_USER!r} (PostgreSQL refuses to run as root)")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            check=True,
            timeout=RUN_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"cannot create the OS user {OS_USER!r}: {error}") from None
    return pwd.getpwnam(OS_USER)


def _make_root(os_user: pwd.struct_passwd | None, prefix: str) -> str:
    root = tempfile.mkdtemp(prefix=prefix)
    if os_user is not None:
        os.chown(root, os_user.pw_uid, os_user.pw_gid)
    return root


def _remove(root: str, keep: bool) -> None:
    if keep:
        _warn(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def _write_private(path: str, text: str, owner: _Daemon) -> None:
    """Write a file only the server's OS user may read: it holds the password."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if owner.os_user is not None:
        os.chown(path, owner.os_user.pw_uid, owner.os_user.pw_gid)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _popen(
    os_user: pwd.struct_passwd | None,
    args: Sequence[str],
    *,
    cwd: str,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start a binary as the server's OS user, in its own session."""
    identity: dict[str, Any] = {}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    environ.update(LC_ALL="C", LANG="C")
    if os_user is not None:
        identity = {"user": os_user.pw_uid, "group": os_user.pw_gid, "extra_groups": []}
        environ.update(HOME=cwd, USER=os_user.pw_name, LOGNAME=os_user.pw_name)
    environ.update(env or {})
    return subprocess.Popen(
        list(args),
        cwd=cwd,
        env=environ,
        text=True,
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **identity,
    )


def _run(
    os_user: pwd.struct_passwd | None,
    args: Sequence[str],
    *,
    cwd: str,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run a binary to completion within RUN_TIMEOUT_S; RuntimeError with its output if it fails."""
    name = os.path.basename(args[0])
    process = _popen(os_user, args, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        output, _ = process.communicate(stdin, timeout=RUN_TIMEOUT_S)
    except BaseException as error:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if isinstance(error, subprocess.TimeoutExpired):
            raise RuntimeError(f"{name} did not finish within {RUN_TIMEOUT_S:.0f} s") from None
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed with status {process.returncode}:\n{output.strip()}")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _tail(path: str, offset: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines of a log, from byte ``offset`` on."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:]).strip()


# A process is its pid and its start time (in clock ticks since boot): pids are reused.
_Process = tuple[int, str]


def _children(pid: int) -> list[_Process]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in glob.glob("/proc/[0-9]*/stat"):
        fields = _stat(entry)
        if len(fields) > 19 and fields[1] == str(pid):
            found.append((int(entry.split("/")[2]), fields[19]))
    return found


def _stat(path: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name, which may hold spaces."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _alive(process: _Process) -> bool:
    """Whether the process runs: a zombie does not."""
    fields = _stat(f"/proc/{process[0]}/stat")
    return len(fields) > 19 and fields[19] == process[1] and fields[0] != "Z"


def _wait_gone(processes: Sequence[_Process]) -> None:
    """Wait for orphaned server processes to notice and exit; SIGKILL the stragglers."""
    for kill in (False, True):
        alive = [p for p in processes if _alive(p)]
        for pid, _ in alive if kill else ():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in alive):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"server processes {[p for p, _ in processes]} survived SIGKILL")
