"""What PostgresServer and PgBouncer share: a process on a port, run as the server's OS user,
in a directory of its own with a log; stdlib only.

PostgreSQL and PgBouncer refuse to run as root: when root uses this package, their binaries
run as the unprivileged OS user ``postgres`` (created when missing), switched to by
subprocess's ``user``/``group`` like setpriv would; otherwise they run as the current user.
Every process gets its own session, so a Ctrl-C in the terminal reaches the caller only,
which then stops them cleanly.
"""

from __future__ import annotations

import abc
import atexit
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Self

from app.testing.processes import HOST, free_port

__all__ = ["HOST", "SUPERUSER", "Daemon"]

SUPERUSER = "postgres"
OS_USER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 120.0


class Daemon(abc.ABC):
    """One process on a port, a directory, a log."""

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
            raise RuntimeError(f"port {self.port} is in use; {self._NOUN} log:\n{tail(self.log)}")

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
            if self.keep:
                warn(f"kept {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def write_private(self, path: str, text: str) -> None:
        """Write a file only the process's OS user may read: it holds the password."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if self.os_user is not None:
            os.chown(path, self.os_user.pw_uid, self.os_user.pw_gid)

    def _start_on_free_port(self, *, explicit: bool) -> None:
        """Start, on other free ports when this one is taken (unless it was ``explicit``)."""
        for attempt in range(5):
            if self._start():
                return
            if explicit or attempt == 4:
                raise RuntimeError(self._port_taken())
            self.port = free_port()

    def _port_taken(self) -> str:
        """The message when the tries of _start_on_free_port ran out."""
        return f"port {self.port} is in use"

    @abc.abstractmethod
    def _start(self) -> bool:
        """Start the process; False when its port was taken by someone else meanwhile."""


# Strong references: a server nobody closed still runs, so it is closed when Python exits
# instead of being left behind when its object is collected.
_OPEN: set[Daemon] = set()


@atexit.register
def _close_forgotten() -> None:
    for resource in list(_OPEN):
        resource.close()


def warn(message: str) -> None:
    print(f"{__package__}: {message}", file=sys.stderr, flush=True)


def server_user() -> pwd.struct_passwd | None:
    """The OS user that runs the servers: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        pass
    warn(f"creating the OS user {OS_USER!r} (PostgreSQL refuses to run as root)")
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


def make_root(os_user: pwd.struct_passwd | None, prefix: str) -> str:
    root = tempfile.mkdtemp(prefix=prefix)
    if os_user is not None:
        os.chown(root, os_user.pw_uid, os_user.pw_gid)
    return root


def popen(
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


def run(
    os_user: pwd.struct_passwd | None,
    args: Sequence[str],
    *,
    cwd: str,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run a binary to completion within RUN_TIMEOUT_S; RuntimeError with its output if it fails."""
    name = os.path.basename(args[0])
    process = popen(os_user, args, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
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


def size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def tail(path: str, offset: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines of a log, from byte ``offset`` on."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:]).strip()
