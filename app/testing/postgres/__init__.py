"""Throwaway PostgreSQL clusters, streaming standbys and PgBouncer for tests; stdlib only.

``cluster`` (PostgresServer: initdb, start, stop, kill, and ``standby()``), ``standby``
(what makes a standby and checks its replay), ``pgbouncer`` (PgBouncer), on ``daemon`` (a
process on a port, run as the OS user ``postgres`` when root runs it) and ``binaries``
(where the executables are). The process toolkit they use is ``app.testing.processes``.
"""

from app.testing.postgres.binaries import find_bindir, find_pgbouncer, missing_binaries
from app.testing.postgres.cluster import PostgresServer, StopMode
from app.testing.postgres.daemon import HOST, SUPERUSER
from app.testing.postgres.pgbouncer import PgBouncer

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
