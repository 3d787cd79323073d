"""Pydantic models of the HTTP API; no output schema carries a password.

A field of an ``...Update`` schema that the client leaves out is ``MISSING`` and stays as it
is; ``null`` is accepted only where the column is nullable (``description``). A password is
a ``Secret``: its value shows in no ``repr``, log line or error answer (``app.web.redaction``).
"""

from typing import Annotated, Generic, Literal, NamedTuple, TypeVar

from pydantic import (
    MISSING,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    Secret,
    StrictBool,
    StringConstraints,
    model_validator,
)

__all__ = [
    "Deleted",
    "HTTPError",
    "ItemCreate",
    "ItemRead",
    "ItemUpdate",
    "LoginForm",
    "Token",
    "UserCreate",
    "UserRead",
    "UserUpdate",
    "Versioned",
]

T = TypeVar("T")


class Versioned(NamedTuple, Generic[T]):
    """A row as the API shows it, and its version (the ETag): the row's, or a composite one
    where the representation holds other rows too (a user's items)."""

    value: T
    version: int | str


_NO_NUL = r"^[^\x00]*$"
"""Text a database can hold: PostgreSQL's cannot hold NUL (and SQLite's would, silently)."""
Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_NO_NUL)
]
Description = Annotated[str, Field(max_length=2000, pattern=_NO_NUL)]


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


# Spaces around an address are no part of it (app.emails.canonical_email compares the rest).
Email = Annotated[EmailStr, BeforeValidator(_strip), Field(max_length=320)]
_WRITE_ONLY_PASSWORD = Field(json_schema_extra={"format": "password", "writeOnly": True})
# The bounds apply to the string inside the Secret: their errors read as any string's do.
Password = Annotated[
    Secret[Annotated[str, StringConstraints(min_length=1, max_length=1024)]], _WRITE_ONLY_PASSWORD
]


class ItemCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"title": "Pen", "description": "blue ink"}]}
    )

    title: Title
    description: Description | None = None


class ItemUpdate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"title": "Fountain pen"}]})

    title: Title | MISSING = MISSING
    description: Description | MISSING | None = MISSING


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

    email: Email
    password: Password


class UserUpdate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"password": "n3w-s3cret", "current_password": "s3cret"}]}
    )

    email: Email | MISSING = MISSING
    password: Password | MISSING = MISSING
    is_active: StrictBool | MISSING = MISSING  # JSON's true or false, as the schema says
    current_password: Annotated[
        Password | MISSING,
        Field(description="with auth on, required to change the password or the e-mail"),
    ] = MISSING


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    is_active: bool
    items: list[ItemRead] = []


class LoginForm(BaseModel):
    """OAuth2's password grant (RFC 6749, section 4.3), form-encoded: ``username`` is the
    e-mail; or its refresh grant (section 6): ``grant_type=refresh_token`` and the
    ``refresh_token``. The fields Swagger UI's Authorize dialog sends are all accepted."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "alice@example.com", "password": "s3cret"}]}
    )

    grant_type: Literal["password", "refresh_token"] | None = None
    username: Annotated[str | None, Field(pattern=_NO_NUL)] = None
    password: Annotated[Secret[str] | None, _WRITE_ONLY_PASSWORD] = None
    refresh_token: Annotated[Secret[str] | None, _WRITE_ONLY_PASSWORD] = None
    scope: str = ""
    client_id: str | None = None
    client_secret: Annotated[Secret[str] | None, _WRITE_ONLY_PASSWORD] = None

    @model_validator(mode="after")
    def _check_grant(self) -> "LoginForm":
        if self.grant_type == "refresh_token":
            if self.refresh_token is None:
                raise ValueError("grant_type=refresh_token needs refresh_token")
        elif self.username is None or self.password is None:
            raise ValueError("the password grant needs username and password")
        return self


class Token(BaseModel):
    """OAuth2's token response (RFC 6749, sections 5.1 and 6): a short-lived access token,
    and a refresh token that renews it once (each use returns a new one)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    refresh_token: str
    expires_in: int
    """Seconds the access token is valid for."""


class Deleted(BaseModel):
    ok: Literal[True] = True


class HTTPError(BaseModel):
    """Every error answer but 422: ``{"detail": "..."}``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "User not found"}]})

    detail: str
