"""Pydantic models of the HTTP API; no output schema carries a password."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

__all__ = ["ItemCreate", "ItemRead", "UserCreate", "UserRead"]

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ItemCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"title": "Pen", "description": "blue ink"}]}
    )

    title: Title
    description: Annotated[str, Field(max_length=2000)] | None = None


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    description: str | None
    owner_id: int


class UserCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "alice@example.com", "password": "s3cret"}]}
    )

    email: Annotated[EmailStr, Field(max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    is_active: bool
    items: list[ItemRead] = []
