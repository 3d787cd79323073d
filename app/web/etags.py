"""Entity tags from row versions, and ``If-Match`` (RFC 9110, section 13.1.1)."""

from typing import TypeVar

from starlette.responses import Response

from app.exceptions import PreconditionFailedError
from app.schemas import Versioned

__all__ = ["check_if_match", "etag", "with_etag"]

T = TypeVar("T")


def etag(version: int | str) -> str:
    """The strong entity tag of a row at ``version``: ``"3"``."""
    return f'"{version}"'


def check_if_match(if_match: str | None, version: int | str) -> None:
    """Pass when there is no ``If-Match``, when it is ``*``, or when it lists the current
    tag; else ``PreconditionFailedError``. Comparison is strong: a weak tag (``W/"3"``)
    never matches."""
    if if_match is None:
        return
    current = etag(version)
    tags = [tag.strip() for tag in if_match.split(",")]
    if "*" in tags or current in tags:
        return
    raise PreconditionFailedError(current)


def with_etag(response: Response, found: Versioned[T]) -> T:
    """Send ``found``'s version as the response's ``ETag``; its value, for the body."""
    response.headers["ETag"] = etag(found.version)
    return found.value
