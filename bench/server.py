"""Run ``uvicorn <target> --workers N`` with the same settings for every app under test."""

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.live_server import PROJECT_ROOT, free_port, spawned_children

__all__ = ["PROJECT_ROOT", "Server", "ServerError", "cpu_seconds", "peak_rss_kib"]

_STARTED = "Application startup complete."
_PORT_ATTEMPTS = 3


class ServerError(RuntimeError):
    """The server did not start; the message carries the tail of its log."""


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


class Server:
    """One uvicorn server on a free 127.0.0.1 port, in its own process group."""

    def __init__(
        self,
        target: str,
        env: dict[str, str],
        *,
        workers: int,
        log_path: Path,
        ready_path: str = "/",
        startup_timeout: float = 60.0,
    ) -> None:
        self.target = target
        self.workers = workers
        self.log_path = log_path
        self.ready_path = ready_path
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        for attempt in range(_PORT_ATTEMPTS):
            self.port = free_port()
            self._start()
            try:
                self._wait_until_ready(startup_timeout)
                return
            except ServerError:
                self.stop()
                # Another process may have taken the port between probe and bind: retry.
                if "address already in use" not in self._log_tail() or (
                    attempt == _PORT_ATTEMPTS - 1
                ):
                    raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        assert self._process is not None
        if self.workers == 1:
            return [self._process.pid]
        return spawned_children(self._process.pid)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL for whatever is left of the process group."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            self.target,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",
            "info",
            "--no-access-log",
        ]
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise ServerError(f"{self.target} exited during startup:\n{self._log_tail()}")
            started = self._log_since_start().count(_STARTED)
            if started >= self.workers and self._answers():
                return
            time.sleep(0.1)
        raise ServerError(f"{self.target} not ready after {timeout:g}s:\n{self._log_tail()}")

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", self.ready_path)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _log_since_start(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_since_start().splitlines()[-lines:])
