"""The declarative base of every model, with named constraints; imports nothing of the app."""

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

__all__ = ["NAMING_CONVENTION", "Base"]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names that migrations can drop or alter by name on every backend."""


class Base(DeclarativeBase):
    """The declarative base of every model: one metadata for create_all and migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
