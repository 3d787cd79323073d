"""The floor: the benchmarked requests on bare Starlette, stdlib sqlite3 and orjson.

No FastAPI, no SQLAlchemy, no pydantic and no threads: each endpoint runs one SQL statement
on the event loop, on one connection per process with the app's pragmas, and SQLite itself
builds the JSON (``json_object`` / ``json_group_array``, faster than rows turned into dicts
for orjson). It answers with the same bytes as ``app.main:app`` for the same data.

    DATABASE_URL=sqlite:///./bench.db uvicorn bench.floor_app:app
"""

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["PRAGMAS", "app", "connect"]

PRAGMAS = ("busy_timeout = 5000", "journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON")

_ITEM = "json_object('id', id, 'title', title, 'description', description, 'owner_id', owner_id)"
# The subquery's ORDER BY orders json_group_array's input (SQLite 3.44 would allow it inside).
_USER = (
    "SELECT json_object('id', u.id, 'email', u.email, "
    "'is_active', json(iif(u.is_active, 'true', 'false')), "
    f"'items', (SELECT json_group_array({_ITEM}) FROM "
    "(SELECT id, title, description, owner_id FROM items WHERE owner_id = u.id ORDER BY id))) "
    "FROM users AS u WHERE u.id = ?"
)
_ITEMS = (
    f"SELECT json_group_array({_ITEM}) FROM "
    "(SELECT id, title, description, owner_id FROM items ORDER BY id LIMIT ? OFFSET ?)"
)
_CREATE_ITEM = (
    "INSERT INTO items (title, description, owner_id) SELECT ?, ?, id FROM users WHERE id = ? "
    f"RETURNING {_ITEM}"
)
_NOT_FOUND = b'{"detail":"User not found"}'


def connect(url: str) -> sqlite3.Connection:
    """A connection to the ``sqlite:///path`` database, in autocommit mode with the pragmas."""
    scheme, _, path = url.partition(":///")
    if scheme != "sqlite" or not path:
        raise ValueError(f"DATABASE_URL must be sqlite:///path, got {url!r}")
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        connection.execute(f"PRAGMA {pragma}")
    return connection


def _json(body: bytes, status_code: int = 200) -> Response:
    return Response(body, status_code, media_type="application/json")


def _invalid(message: str) -> Response:
    return _json(orjson.dumps({"detail": message}), 422)


def _database(request: Request) -> sqlite3.Connection:
    connection: sqlite3.Connection = request.app.state.database
    return connection


async def read_user(request: Request) -> Response:
    user_id: int = request.path_params["user_id"]
    row = _database(request).execute(_USER, (user_id,)).fetchone()
    if row is None:
        return _json(_NOT_FOUND, 404)
    return _json(row[0].encode())


def _bounded(request: Request, name: str, default: int, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if low <= value <= high else None


async def read_items(request: Request) -> Response:
    skip = _bounded(request, "skip", 0, 0, 2**63 - 1)
    limit = _bounded(request, "limit", 100, 1, 1000)
    if skip is None or limit is None:
        return _invalid("skip must be 0 or more, limit 1..1000")
    row = _database(request).execute(_ITEMS, (limit, skip)).fetchone()
    return _json(row[0].encode())


def _item_in(body: bytes) -> tuple[str, str | None] | None:
    """``(title, description)`` as ``app.schemas.ItemCreate`` takes them, or None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    title, description = data.get("title"), data.get("description")
    if not isinstance(title, str) or not 1 <= len(title := title.strip()) <= 200:
        return None
    if description is not None and (not isinstance(description, str) or len(description) > 2000):
        return None
    return title, description


async def create_item_for_user(request: Request) -> Response:
    item_in = _item_in(await request.body())
    if item_in is None:
        return _invalid("title: 1..200 characters; description: at most 2000 or null")
    database = _database(request)
    database.execute("BEGIN IMMEDIATE")
    try:
        rows = database.execute(_CREATE_ITEM, (*item_in, request.path_params["user_id"])).fetchall()
        database.execute("COMMIT")
    except BaseException:
        database.execute("ROLLBACK")
        raise
    if not rows:
        return _json(_NOT_FOUND, 404)
    return _json(rows[0][0].encode())


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.database = connect(os.environ.get("DATABASE_URL", "sqlite:///./sql_app.db"))
    try:
        yield
    finally:
        app.state.database.close()


app = Starlette(
    routes=[
        Route("/users/{user_id:int}", read_user, methods=["GET"]),
        Route("/users/{user_id:int}/items/", create_item_for_user, methods=["POST"]),
        Route("/items/", read_items, methods=["GET"]),
    ],
    lifespan=lifespan,
)
