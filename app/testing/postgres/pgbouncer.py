"""PgBouncer in front of a throwaway PostgreSQL cluster, for tests; stdlib only."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Literal

from app.testing.postgres.binaries import find_pgbouncer, pgbouncer_version
from app.testing.postgres.cluster import PostgresServer
from app.testing.postgres.daemon import (
    HOST,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    SUPERUSER,
    Daemon,
    make_root,
    popen,
    size,
    tail,
    warn,
)
from app.testing.processes import free_port

__all__ = ["PgBouncer"]


class PgBouncer(Daemon):
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
        self.version = pgbouncer_version(self.binary)
        if max_prepared_statements and self.version < (1, 21):
            raise RuntimeError(
                f"PgBouncer {'.'.join(map(str, self.version))} has no "
                "max_prepared_statements (1.21+)"
            )
        super().__init__(
            root=make_root(server.os_user, "pgbouncer-"),
            port=port or free_port(),
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
            self.write_private(self.settings["auth_file"], f'"{SUPERUSER}" "{self.password}"\n')
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
            warn(f"PgBouncer on port {self.port} did not stop; killing it")
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
        return f"PgBouncer cannot listen on port {self.port}; its log:\n{tail(self.log)}"

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
        self.write_private(self.config, "\n".join(config) + "\n")
        offset = size(self.log)
        with open(self.log, "a", encoding="utf-8") as log:
            process = popen(self.os_user, [self.binary, self.config], cwd=self.root, stdout=log)
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while "process up:" not in tail(self.log, offset):
            code = process.poll()
            if code is not None:
                self._process = None
                log_tail = tail(self.log, offset)
                if "Address already in use" in log_tail:
                    return False
                raise RuntimeError(
                    f"pgbouncer exited with status {code} while starting; its log:\n{log_tail}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"pgbouncer did not start within {START_TIMEOUT_S:.0f} s; its log:\n"
                    f"{tail(self.log, offset)}"
                )
            time.sleep(0.05)
        return True
