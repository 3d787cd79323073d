"""WAL positions: an LSN as an integer, read from a server and written in PostgreSQL's text
form (``16/B374D848``)."""

import re
from typing import Any

from sqlalchemy import Connection, text

__all__ = ["REPLAYED", "format_lsn", "insert_position", "parse_lsn", "replayed_position"]

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
# What a server has replayed: a standby's replay position; a server out of recovery (a
# promoted standby, or a replica URL that names the primary) sees all it has inserted.
REPLAYED = (
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_insert_lsn() END"
)
_POSITION = text(f"SELECT ({REPLAYED})::text")
_INSERT_POSITION = "SELECT pg_current_wal_insert_lsn()::text"


def parse_lsn(value: str) -> int | None:
    """``"16/B374D848"`` -> its position; None unless it is an LSN as PostgreSQL writes one."""
    found = _LSN.fullmatch(value)
    return None if found is None else int(found[1], 16) << 32 | int(found[2], 16)


def format_lsn(position: int) -> str:
    """A position in PostgreSQL's text form: ``16/B374D848``."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def insert_position(dbapi_connection: Any) -> int:
    """The primary's WAL insert position, read on an idle psycopg connection in one round
    trip, outside any transaction: past the commit record of every transaction that has
    committed on it. (``pg_current_wal_lsn()``, the write position, can still be before
    that record with ``synchronous_commit=off``.)"""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_INSERT_POSITION)
            (value,) = cursor.fetchone()
    finally:
        dbapi_connection.autocommit = autocommit
    return parse_lsn(value) or 0


def replayed_position(connection: Connection) -> int:
    """What the server behind ``connection`` has replayed, read in its transaction."""
    return parse_lsn(connection.execute(_POSITION).scalar() or "") or 0
