"""Test data: users and items, through the database or over HTTP, with unique defaults."""

import itertools
from typing import Any

from fastapi.testclient import TestClient

from app.database import SessionLocal
from app.models import Item, User

__all__ = [
    "PASSWORD",
    "add_item",
    "add_user",
    "create_item",
    "create_user",
    "new_user",
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


def add_user(email: str | None = None, **fields: Any) -> int:
    """A user row written straight to the container's current database; its id."""
    with SessionLocal.begin() as session:
        user = new_user(email, **fields)
        session.add(user)
        session.flush()
        return user.id


def add_item(owner_id: int, title: str | None = None, **fields: Any) -> int:
    """An item row written straight to the container's current database; its id."""
    with SessionLocal.begin() as session:
        item = Item(title=title or f"item {next(_numbers)}", owner_id=owner_id, **fields)
        session.add(item)
        session.flush()
        return item.id


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
