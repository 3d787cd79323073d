"""Items: pages, one item, an item for a user, changes by its owner."""

from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from app.exceptions import PermissionDeniedError
from app.models import Item, User
from app.outbox.events import created, deleted, updated
from app.schemas import ItemCreate, ItemRead, ItemUpdate, Versioned
from app.services.rows import FIRST, locked, schemas

__all__ = ["ItemService"]

# Reads are Core statements turned into schemas, as in app.services.users.
_ITEM = (Item.id, Item.title, Item.description, Item.owner_id)
_ITEM_BY_ID = select(*_ITEM, Item.version).where(Item.id == bindparam("item_id"))
_ITEM_PAGE = (
    select(*_ITEM)
    .where(Item.id > bindparam("after_id"))
    .order_by(Item.id)
    .offset(bindparam("skip"))
    .limit(bindparam("limit"))
)
_ADD_ITEM = (
    insert(Item)
    .from_select(
        ["title", "description", "owner_id"],
        select(
            bindparam("title", type_=Item.title.type),
            bindparam("description", type_=Item.description.type),
            User.id,
        ).where(User.id == bindparam("user_id")),
    )
    .returning(Item.id)
)


class ItemService:
    def get(self, session: Session, item_id: int) -> Versioned[ItemRead] | None:
        row = session.connection().execute(_ITEM_BY_ID, {"item_id": item_id}).first()
        return Versioned(_item_of(row), row.version) if row is not None else None

    def get_page(
        self, session: Session, *, skip: int, limit: int, after_id: int | None = None
    ) -> list[ItemRead]:
        """Items in id order: ``skip`` rows after ``after_id``."""
        page = {"skip": skip, "limit": limit, "after_id": after_id or FIRST}
        return schemas(ItemRead, session.connection().execute(_ITEM_PAGE, page))

    def create_for_user(
        self, session: Session, user_id: int, item_in: ItemCreate, *, caller_id: int | None
    ) -> ItemRead | None:
        """One statement (INSERT ... SELECT FROM users): no row when there is no such user."""
        if caller_id is not None and caller_id != user_id:
            if session.get(User, user_id) is None:
                return None
            raise PermissionDeniedError
        values = {**item_in.model_dump(), "user_id": user_id}
        item_id = session.connection().scalar(_ADD_ITEM, values)
        if item_id is None:
            return None
        item = ItemRead(id=item_id, owner_id=user_id, **item_in.model_dump())
        return created(session, Item, item)

    def update(
        self,
        session: Session,
        item_id: int,
        changes: ItemUpdate,
        *,
        if_match: str | None,
        caller_id: int | None,
    ) -> Versioned[ItemRead] | None:
        """Apply the fields the client sent; ``caller_id``, when given, must own the item."""
        item = locked(session, Item, item_id, if_match, caller_id)
        if item is None:
            return None
        for field, value in changes.model_dump(exclude_unset=True).items():
            setattr(item, field, value)
        session.flush()
        return Versioned(updated(session, Item, ItemRead.model_validate(item)), item.version)

    def delete(
        self, session: Session, item_id: int, *, if_match: str | None, caller_id: int | None
    ) -> bool:
        item = locked(session, Item, item_id, if_match, caller_id)
        if item is None:
            return False
        gone = ItemRead.model_validate(item)
        session.delete(item)
        session.flush()
        deleted(session, Item, gone)
        return True


def _item_of(row: Any) -> ItemRead:
    return ItemRead(id=row.id, title=row.title, description=row.description, owner_id=row.owner_id)
