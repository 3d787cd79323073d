"""The framework floor: the app's SQL behind FastAPI's own routing and typed parameters.

What FastAPI itself costs, with the database work of ``app.main:app`` and nothing of the
app's own layers: no container, no units of work, no SQLAlchemy, no pydantic models (the
JSON is built from the rows with orjson), no middleware. Each benchmarked request runs the
statements the app runs for it on SQLite (``ECHO_SQL`` and ``sqlite3``'s trace callback
show them), in the same transaction modes, on the event loop as the app's reads do:

- ``GET /users/{id}``, ``GET /items/``: ``BEGIN DEFERRED``, the app's SELECT, ``ROLLBACK``,
  on a connection in ``PRAGMA query_only`` mode (the app's reads run in that mode);
- ``POST /users/{id}/items/``: ``BEGIN IMMEDIATE``, the app's ``INSERT ... SELECT`` and its
  outbox event's INSERT, ``COMMIT``.

It answers with the same bytes as the app for the same data (without the ``ETag``).

    DATABASE_URL=sqlite:///./bench.db uvicorn bench.framework_app:app
"""

import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import Response

from bench.floor_app import connect

__all__ = ["app"]

# The app's statements, as SQLAlchemy compiles them for SQLite (app.services, app.outbox).
_USER = (
    "SELECT users.id, users.email, users.is_active, users.version, items.id AS item_id, "
    "items.title, items.description, items.owner_id, items.version AS item_version \n"
    "FROM users LEFT OUTER JOIN items ON items.owner_id = users.id \n"
    "WHERE users.id = ? ORDER BY items.id"
)
_ITEMS = (
    "SELECT items.id, items.title, items.description, items.owner_id \nFROM items \n"
    "WHERE items.id > ? ORDER BY items.id\n LIMIT ? OFFSET ?"
)
_ADD_ITEM = (
    "INSERT INTO items (title, description, owner_id) SELECT ? AS anon_1, ? AS anon_2, "
    "users.id \nFROM users \nWHERE users.id = ? RETURNING id"
)
_ADD_EVENT = (
    "INSERT INTO outbox_events (id, type, payload, traceparent, created_at, due_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_INT32 = 2**31 - 1

Id = Annotated[int, Path(ge=-_INT32 - 1, le=_INT32)]


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _event_id(now: float) -> str:
    value = (int(now * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "msg_" + "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _read(request: Request, statement: str, parameters: tuple[Any, ...]) -> list[Any]:
    reads: sqlite3.Connection = request.app.state.reads
    reads.execute("BEGIN DEFERRED")
    try:
        return reads.execute(statement, parameters).fetchall()
    finally:
        reads.execute("ROLLBACK")


def _item(row: Any) -> dict[str, Any]:
    return {"id": row[0], "title": row[1], "description": row[2], "owner_id": row[3]}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ.get("DATABASE_URL", "sqlite:///./sql_app.db")
    app.state.reads, app.state.writes = connect(url), connect(url)
    app.state.reads.execute("PRAGMA query_only = ON")
    try:
        yield
    finally:
        app.state.reads.close()
        app.state.writes.close()


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
async def read_user(user_id: Id, request: Request) -> Response:
    rows = _read(request, _USER, (user_id,))
    if not rows:
        raise HTTPException(status_code=404, detail="User not found")
    first = rows[0]
    items = [_item(row[4:8]) for row in rows if row[4] is not None]
    return _json({"id": first[0], "email": first[1], "is_active": bool(first[2]), "items": items})


@app.get("/items/")
async def read_items(
    request: Request,
    skip: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after_id: Annotated[int | None, Query(ge=0, le=_INT32)] = None,
) -> Response:
    return _json([_item(row) for row in _read(request, _ITEMS, (after_id or 0, limit, skip))])


@app.post("/users/{user_id}/items/")
async def create_item_for_user(
    user_id: Id,
    request: Request,
    title: Annotated[str, Body(min_length=1, max_length=200)],
    description: Annotated[str | None, Body(max_length=2000)] = None,
) -> Response:
    title = title.strip()
    writes: sqlite3.Connection = request.app.state.writes
    writes.execute("BEGIN IMMEDIATE")
    try:
        row = writes.execute(_ADD_ITEM, (title, description, user_id)).fetchone()
        if row is None:
            writes.execute("ROLLBACK")
            raise HTTPException(status_code=404, detail="User not found")
        item = {"id": row[0], "title": title, "description": description, "owner_id": user_id}
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
        payload = b'{"type":"item.created","timestamp":"%s","data":%s}' % (
            f"{stamp[:-6]}Z".encode(),
            orjson.dumps(item),
        )
        writes.execute(
            _ADD_EVENT, (_event_id(now), "item.created", payload.decode(), None, now, now)
        )
        writes.execute("COMMIT")
    except BaseException:
        if writes.in_transaction:
            writes.execute("ROLLBACK")
        raise
    return _json(item)
