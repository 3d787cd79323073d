"""How many units of work run at once, and how they run, for an engine and the settings."""

from typing import NamedTuple

from sqlalchemy import Engine

from app.config import Settings
from app.db.engines import has_one_connection
from app.db.urls import backend
from app.units.gate import Gate

__all__ = [
    "SERVER_CONCURRENT_UNITS",
    "SQLITE_CONCURRENT_READS",
    "SQLITE_CONCURRENT_WRITES",
    "Gates",
    "build_gates",
    "inline_read_budget",
    "write_batch_size",
]

SQLITE_CONCURRENT_READS = 2
"""Reads at once on SQLite by default: its reads are CPU work in this process, so more
threads only fight over the GIL."""
SQLITE_CONCURRENT_WRITES = 1
"""Writes at once on SQLite by default: it has one writer; the rest queue in the process."""
SERVER_CONCURRENT_UNITS = 4
"""Reads, and writes, at once on a database server by default: enough overlapping round
trips to keep one process busy; past that, threads only fight over the GIL (measured with
32 clients on PostgreSQL: 1.1 ms of CPU per read with 4, 2.3 ms with 15)."""


class Gates(NamedTuple):
    read: Gate
    write: Gate


def _gate(s: Settings, engine: Engine, wanted: int | None, sqlite_default: int) -> Gate:
    """A gate for ``wanted`` units of work at once (or the backend's default), but never
    more than the thread pool or the connection pool can serve."""
    if wanted is None:
        wanted = sqlite_default if backend(engine) == "sqlite" else SERVER_CONCURRENT_UNITS
    pool = s.DB_POOL_SIZE + s.DB_MAX_OVERFLOW  # what both backends' sync pools hold
    return Gate(min(s.THREADPOOL_SIZE, wanted, pool), s.DB_QUEUE_TIMEOUT)


def build_gates(s: Settings, engine: Engine) -> Gates:
    """The read gate and the write gate in front of ``engine``, sized from the settings."""
    if has_one_connection(engine):
        # One connection, handed out without waiting: one unit of work at a time, any kind.
        one = Gate(1, s.DB_QUEUE_TIMEOUT)
        return Gates(one, one)
    return Gates(
        read=_gate(s, engine, s.MAX_CONCURRENT_READS, SQLITE_CONCURRENT_READS),
        write=_gate(s, engine, s.MAX_CONCURRENT_WRITES, SQLITE_CONCURRENT_WRITES),
    )


def inline_read_budget(s: Settings, engine: Engine) -> float | None:
    """Seconds of SQLite work a read may do on the event loop; None: reads use threads.

    Only for SQLite files: their reads are CPU work in this process and never wait for a
    lock. A server's reads wait on the network (threads overlap them); an in-memory
    database's one connection is shared with writers running in threads.
    """
    if backend(engine) != "sqlite" or has_one_connection(engine):
        return None
    return s.SQLITE_READ_ON_LOOP_MS / 1000 or None


def write_batch_size(s: Settings, engine: Engine) -> int:
    """Writes per transaction: SQLITE_WRITE_BATCH on SQLite, which runs one writer at a
    time anyway; elsewhere 1, since concurrent transactions serve more than one batch."""
    return s.SQLITE_WRITE_BATCH if backend(engine) == "sqlite" else 1
