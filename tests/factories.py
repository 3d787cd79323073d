"""Test data for any table, through the database or over HTTP, with unique defaults."""

import itertools
import re
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Boolean, Column, Float, Integer, String, inspect

from app.database import Base, SessionLocal
from app.models import User

__all__ = [
    "PASSWORD",
    "add",
    "create_item",
    "create_user",
    "id_name",
    "new_user",
    "seed_ids",
    "unique_email",
]

PASSWORD = "correct horse battery staple"
_numbers = itertools.count(1)


def unique_email(name: str = "user") -> str:
    return f"{name}{next(_numbers)}@example.com"


def new_user(email: str | None = None, **fields: Any) -> User:
    """A ``User`` not yet added to any session."""
    fields.setdefault("hashed_password", "not-a-real-hash")
    return User(email=email or unique_email(), **fields)


def _models() -> dict[str, type[Base]]:
    """Every mapped class, by table name."""
    return {mapper.class_.__tablename__: mapper.class_ for mapper in Base.registry.mappers}


def id_name(model: type[Base]) -> str:
    """How a path names ``model``'s id: ``user_id``, ``item_id``, ``login_counter_id``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower() + "_id"


def _needs_value(column: Column[Any]) -> bool:
    defaulted = column.default is not None or column.server_default is not None
    generated = column.primary_key and column.autoincrement in (True, "auto")
    return not (column.nullable or defaulted or generated)


def _unique(column: Column[Any]) -> Any:
    if column.foreign_keys:
        [key] = column.foreign_keys
        return add(_models()[key.column.table.name])
    if "email" in column.name:
        return unique_email()
    if isinstance(column.type, String):
        return f"{column.name} {next(_numbers)}"[: column.type.length]
    if isinstance(column.type, Boolean):
        return True
    if isinstance(column.type, Integer | Float):
        return next(_numbers)
    raise TypeError(f"add() cannot make up {column}: pass it")


def add(model: type[Base], **fields: Any) -> int:
    """A row of ``model`` written straight to the container's current database; its id.

    Each required column left out gets a unique value; a required foreign key, a new row
    of the table it names (``add(Item)`` adds a user too)."""
    mapper = inspect(model)
    for column in Base.metadata.tables[model.__tablename__].columns:
        key = mapper.get_property_by_column(column).key
        if key not in fields and _needs_value(column):
            fields[key] = _unique(column)
    with SessionLocal.begin() as session:
        row = model(**fields)
        session.add(row)
        session.flush()
        [primary_key] = mapper.primary_key
        row_id: int = getattr(row, mapper.get_property_by_column(primary_key).key)
        return row_id


def seed_ids(**given: int) -> dict[str, int]:
    """A row in every table with an integer id, by its ``id_name``: ``{"user_id": 1,
    "item_id": 1, ...}``. Each foreign key names the row seeded (or ``given``) for its table,
    so ``seed_ids(user_id=owner)`` gives rows that ``owner`` owns."""
    ids: dict[str, int] = {}
    models = _models()
    for table in Base.metadata.sorted_tables:
        model = models.get(table.name)
        [primary_key] = table.primary_key.columns
        if model is None or not isinstance(primary_key.type, Integer):
            continue
        name = id_name(model)
        if name in given:
            ids[name] = given[name]
            continue
        mapper = inspect(model)
        parents = {
            mapper.get_property_by_column(column).key: ids[id_name(models[key.column.table.name])]
            for column in table.columns
            for key in column.foreign_keys
        }
        ids[name] = add(model, **parents)
    return ids


def create_user(
    client: TestClient, email: str | None = None, password: str = PASSWORD
) -> dict[str, Any]:
    """``POST /users/``, which must succeed; the created user."""
    response = client.post("/users/", json={"email": email or unique_email(), "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def create_item(client: TestClient, owner_id: int, **body: Any) -> dict[str, Any]:
    """``POST /users/{owner_id}/items/``, which must succeed; the created item."""
    body.setdefault("title", f"item {next(_numbers)}")
    response = client.post(f"/users/{owner_id}/items/", json=body)
    assert response.status_code == 200, response.text
    item: dict[str, Any] = response.json()
    return item
