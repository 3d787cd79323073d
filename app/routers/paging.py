"""Bounded request parameters: pagination, and ids within the id columns' range."""

from typing import Annotated

from fastapi import Path, Query

__all__ = ["AfterId", "Id", "Limit", "Skip"]

# Values outside the columns' integer types would make the database raise (a 500); any id
# inside the range that names no row is a 404, as in the tutorial.
_BIGINT_MAX = 2**63 - 1
_INTEGER_MIN, _INTEGER_MAX = -(2**31), 2**31 - 1

Skip = Annotated[int, Query(ge=0, le=_BIGINT_MAX, description="rows to skip")]
Limit = Annotated[int, Query(ge=1, le=1000, description="rows to return, 1..1000")]
Id = Annotated[int, Path(ge=_INTEGER_MIN, le=_INTEGER_MAX, description="a 32-bit row id")]
AfterId = Annotated[
    int | None,
    Query(
        ge=0,
        le=_INTEGER_MAX,
        description="keyset pagination: only rows with a larger id (pass the last id of the "
        "previous page); unlike skip, its cost does not grow with the page's depth",
    ),
]
