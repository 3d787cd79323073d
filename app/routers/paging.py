"""Bounded pagination parameters shared by the list endpoints."""

from typing import Annotated

from fastapi import Query

__all__ = ["Limit", "Skip"]

Skip = Annotated[int, Query(ge=0, description="rows to skip")]
Limit = Annotated[int, Query(ge=1, le=1000, description="rows to return, 1..1000")]
