"""A real uvicorn server in a subprocess, for tests and benchmarks that need real sockets.

    with LiveServer({"DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}, workers=2) as server:
        httpx.get(f"{server.url}/users/")
        server.worker_pids()  # the two worker processes
        server.log_text()

The server runs ``python -m uvicorn app.main:app`` (or, with ``serve=True``, ``app serve``:
the production entry point, with its logging, metrics directory and exit status) from the
current directory on a free 127.0.0.1 port, in its own process group, with stdout and stderr
captured in ``log_path`` (a temporary file removed by ``stop()`` unless you pass one;
``log_text()`` keeps working). Construction returns once ``/health`` answers 200 and every
worker reported startup; ``stop()`` (or leaving the ``with`` block) terminates the server and
every process of its group; ``terminate()`` only sends SIGTERM, and ``wait()`` waits for the
exit that follows. Every wait is bounded.
"""

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from app.testing.processes import HOST, children, free_port

__all__ = ["LiveServer", "LiveServerError"]

_STARTED = "Application startup complete."
_PORT_ATTEMPTS = 3


class LiveServerError(RuntimeError):
    """The server did not start (the message carries the tail of its log)."""


class LiveServer:
    """``uvicorn <app> --workers N`` (``app serve --workers N`` with ``serve``) with ``env``
    on top of this process's environment.

    Ready once every worker reported startup and ``ready_path`` answers 200.
    """

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 1,
        *,
        startup_timeout: float = 60.0,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
        app: str = "app.main:app",
        ready_path: str = "/health",
        cwd: Path | None = None,
        serve: bool = False,
    ) -> None:
        self.workers = workers
        self.app = app
        self.serve = serve
        self.ready_path = ready_path
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="live-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._final_log: str | None = None
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self._extra_args = extra_args
        self._cwd = cwd or Path.cwd()  # where config.yml and .env are read
        self._process: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        for attempt in range(_PORT_ATTEMPTS):
            self.port = free_port()
            self._start()
            try:
                self._wait_until_ready(startup_timeout)
                return
            except LiveServerError:
                self._terminate(timeout=20.0)
                # Another process may have taken the port between probe and bind: retry.
                if "address already in use" not in self.log_text() or (
                    attempt == _PORT_ATTEMPTS - 1
                ):
                    self.stop()
                    raise

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The uvicorn process (the supervisor when ``workers > 1``)."""
        assert self._process is not None
        return self._process.pid

    def worker_pids(self) -> list[int]:
        """The processes serving requests: the supervisor's children, or the server itself."""
        if self.workers == 1:
            return [self.pid]
        # multiprocessing's spawn starts the workers (and a resource tracker, not one).
        return [pid for pid, _ in children(self.pid, cmdline_contains=b"spawn_main")]

    def log_text(self) -> str:
        """Everything the server printed so far (also after ``stop()``)."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def is_running(self) -> bool:
        return self._process is not None and not self._exited()

    def terminate(self) -> None:
        """Send SIGTERM, as an orchestrator does, and return at once."""
        if self.is_running():
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the server to exit by itself; then ``stop()`` it (which
        reaps it and kills what is left of its group) and return its exit code. None if it
        still runs."""
        deadline = time.monotonic() + timeout
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        return None if self.is_running() else self.stop()

    def stop(self, timeout: float = 20.0) -> int | None:
        """Terminate gracefully (SIGTERM), then kill what is left; the exit code. Idempotent."""
        if self._final_log is None:
            self._terminate(timeout)
            self._final_log = self.log_text()
            if self._own_log:
                self.log_path.unlink(missing_ok=True)
        return self._returncode

    def _exited(self) -> bool:
        """Whether uvicorn exited, without reaping it: its pid (our group id) stays reserved."""
        assert self._process is not None
        if self._process.returncode is not None:
            return True
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, self._process.pid, flags) is not None

    def _terminate(self, timeout: float) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        if not self._exited():
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.05)
        # Workers the supervisor did not reap must not outlive the test. Until the wait()
        # below reaps uvicorn, no other process can own this group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self._returncode = process.wait(timeout)

    def __enter__(self) -> "LiveServer":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        program = ["app.cli", "serve"] if self.serve else ["uvicorn", self.app]
        command = [
            sys.executable,
            "-m",
            *program,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",  # readiness counts the "Application startup complete." lines
            "info",
            *self._extra_args,
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise LiveServerError(f"{self.app} exited during startup:\n{self._log_tail()}")
            if self._healthy() and self.log_text().count(_STARTED) >= self.workers:
                return
            time.sleep(0.1)
        raise LiveServerError(f"{self.app} not ready after {timeout:g}s:\n{self._log_tail()}")

    def _healthy(self) -> bool:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            connection.request("GET", self.ready_path)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
