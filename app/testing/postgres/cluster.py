"""Throwaway PostgreSQL clusters: initdb, start, stop, crash, and standbys of them."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from app.testing.postgres.binaries import find_bindir
from app.testing.postgres.daemon import (
    HOST,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    SUPERUSER,
    Daemon,
    make_root,
    popen,
    run,
    server_user,
    size,
    tail,
    warn,
)
from app.testing.postgres.standby import base_backup, has_replayed, passfile_line, standby_options
from app.testing.processes import children, free_port, wait_gone

__all__ = ["REPLICATION_OPTIONS", "SERVER_OPTIONS", "PostgresServer", "StopMode"]

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
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


class PostgresServer(Daemon):
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
        os_user = server_user()
        replication = REPLICATION_OPTIONS if wal_level_replica else _NO_REPLICATION
        server = cls(
            bindir=bindir,
            root=make_root(os_user, "pg-"),
            port=port or free_port(),
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
        standby = PostgresServer(
            bindir=self.bindir,
            root=make_root(self.os_user, "pg-standby-"),
            port=port or free_port(),
            password=self.password,
            os_user=self.os_user,
            options=standby_options(self.options, apply_delay),
            keep=self.keep,
        )
        try:
            passfile = os.path.join(standby.root, "pgpass")
            standby.write_private(passfile, passfile_line(self.port, self.password))
            base_backup(
                self.bindir,
                self.os_user,
                primary_port=self.port,
                passfile=passfile,
                data=standby.data,
                cwd=standby.root,
            )
            standby._start_on_free_port(explicit=port is not None)
        except BaseException:
            standby.close()
            raise
        return standby

    def has_replayed(self, primary: PostgresServer) -> bool:
        """Whether this standby has replayed every commit ``primary`` has made so far."""
        return has_replayed(primary.url(), self.url())

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut down in ``mode``, escalating to immediate and then SIGKILL if it takes too long."""
        process = self._process
        if process is None:
            return
        backends = children(process.pid)
        for signum in (_STOP_SIGNALS[mode], signal.SIGQUIT):
            if process.poll() is None:
                process.send_signal(signum)
            try:
                process.wait(STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                warn(f"postgres on port {self.port} did not stop after {signum.name}")
        else:
            process.kill()
            process.wait()
        self._process = None
        wait_gone(backends)

    def kill(self) -> None:
        """SIGKILL the postmaster, like a crash; start() afterwards runs crash recovery."""
        process = self._process
        if process is None:
            return
        backends = children(process.pid)
        process.kill()
        process.wait()
        self._process = None
        # The next postmaster refuses to start while they still hold the old shared memory.
        wait_gone(backends)

    def restart(self) -> None:
        """stop() then start(), on the same port."""
        self.stop()
        self.start()

    def _initdb(self) -> None:
        pwfile = os.path.join(self.root, "pwfile")
        self.write_private(pwfile, self.password + "\n")
        try:
            run(
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
        run(
            self.os_user,
            [os.path.join(self.bindir, "postgres"), "--single", "-D", self.data, "postgres"],
            cwd=self.root,
            stdin=f'CREATE DATABASE "{name}";\n',
        )

    def _start(self) -> bool:
        """Start the postmaster; False when its port was taken by someone else meanwhile."""
        offset = size(self.log)
        options = {**self.options, "port": str(self.port), "unix_socket_directories": self.root}
        args = [os.path.join(self.bindir, "postgres"), "-D", self.data]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        # Our own child rather than pg_ctl's daemon: kill() can reap it, and no zombie of it
        # blocks the next start when nobody reaps orphans.
        with open(self.log, "a", encoding="utf-8") as log:
            process = popen(self.os_user, args, cwd=self.root, stdout=log)
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepting(process.pid):
            code = process.poll()
            if code is not None:
                self._process = None
                log_tail = tail(self.log, offset)
                if "could not bind" in log_tail or "could not create any TCP/IP" in log_tail:
                    return False
                raise RuntimeError(
                    f"postgres exited with status {code} while starting; server log:\n{log_tail}"
                )
            if time.monotonic() > deadline:
                self.stop("immediate")
                raise RuntimeError(
                    f"postgres on port {self.port} did not accept connections within "
                    f"{START_TIMEOUT_S:.0f} s; server log:\n{tail(self.log, offset)}"
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
