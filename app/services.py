"""Users and items: the domain logic, taking a session from the caller and never opening one.

Each method taking a ``Session`` is one unit of database work for ``Read`` / ``Write``
(``app.units``), which run it in a worker thread; the caller owns the transaction.
Updates and deletes lock the row they change (``FOR UPDATE`` on PostgreSQL; SQLite writes
one at a time anyway) and compare ``If-Match`` with its version inside that transaction.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

from pydantic import MISSING, Secret
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.credentials import Passwords
from app.exceptions import EmailAlreadyRegisteredError, PermissionDeniedError
from app.models import Item, User
from app.schemas import (
    ItemCreate,
    ItemRead,
    ItemUpdate,
    UserCreate,
    UserRead,
    UserUpdate,
    Versioned,
)
from app.web.etags import check_if_match

__all__ = ["Credentials", "ItemService", "UserService"]

Row = TypeVar("Row", User, Item)


class Credentials(NamedTuple):
    """What a login needs of a user."""

    id: int
    hashed_password: str
    is_active: bool


# Reads run SQLAlchemy Core statements and build the response schemas from the rows: no
# identity map and no ORM instances, a quarter of the CPU of loading entities (and one
# query where selectinload takes two). Writes that change rows use the ORM, for its version
# checks; every method returns schemas, never ORM objects, which stay in the transaction.
_ITEM = (Item.id, Item.title, Item.description, Item.owner_id)
_ITEM_OF_USER = (Item.id.label("item_id"), Item.title, Item.description, Item.owner_id)
_USER_WITH_ITEMS = (
    select(User.id, User.email, User.is_active, User.version, *_ITEM_OF_USER)
    .outerjoin(Item, Item.owner_id == User.id)
    .where(User.id == bindparam("user_id"))
    .order_by(Item.id)
)
_USER_PAGE = (
    select(User.id, User.email, User.is_active)
    .where(User.id > bindparam("after_id"))
    .order_by(User.id)
    .offset(bindparam("skip"))
    .limit(bindparam("limit"))
    .subquery()
)
_USERS_WITH_ITEMS = (
    select(_USER_PAGE, *_ITEM_OF_USER)
    .outerjoin(Item, Item.owner_id == _USER_PAGE.c.id)
    .order_by(_USER_PAGE.c.id, Item.id)
)
_CREDENTIALS = select(User.id, User.hashed_password, User.is_active).where(
    User.email == bindparam("email")
)
_ACTIVE = select(User.id).where(User.id == bindparam("user_id"), User.is_active)
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
_ADD_USER = insert(User).returning(User.id)
_FIRST = 0  # after_id when the client gave none: ids start at 1


class UserService:
    def __init__(self, passwords: Passwords) -> None:
        self._passwords = passwords

    def get(self, session: Session, user_id: int) -> Versioned[UserRead] | None:
        rows = session.connection().execute(_USER_WITH_ITEMS, {"user_id": user_id}).all()
        return Versioned(_users_of(rows)[0], rows[0].version) if rows else None

    def get_page(
        self, session: Session, *, skip: int, limit: int, after_id: int | None = None
    ) -> list[UserRead]:
        """Users in id order, with their items: ``skip`` rows after ``after_id``."""
        page = {"skip": skip, "limit": limit, "after_id": after_id or _FIRST}
        return _users_of(session.connection().execute(_USERS_WITH_ITEMS, page).all())

    def get_by_email(self, session: Session, email: str) -> Credentials | None:
        row = session.connection().execute(_CREDENTIALS, {"email": email}).first()
        return Credentials(*row) if row is not None else None

    def get_active(self, session: Session, user_id: int) -> int | None:
        """The user's id, when it exists and is active: whom a token may still speak for."""
        found: int | None = session.connection().scalar(_ACTIVE, {"user_id": user_id})
        return found

    async def hash_password(self, password: Secret[str]) -> str:
        """Argon2id, ~0.1 s of CPU: in a worker thread, never inside a write transaction."""
        return await self._passwords.hash(password)

    def create(self, session: Session, user_in: UserCreate, hashed_password: str) -> UserRead:
        values = {"email": user_in.email, "hashed_password": hashed_password}
        try:
            user_id = session.connection().scalar(_ADD_USER, values)
        except IntegrityError as exc:
            raise EmailAlreadyRegisteredError(user_in.email) from exc
        return UserRead(id=user_id, email=user_in.email, is_active=True, items=[])

    def update(
        self,
        session: Session,
        user_id: int,
        changes: UserUpdate,
        hashed_password: str | None,
        *,
        if_match: str | None,
        caller_id: int | None,
    ) -> Versioned[UserRead] | None:
        """Apply the fields the client sent (the password already hashed)."""
        user = _locked(session, User, user_id, if_match, caller_id)
        if user is None:
            return None
        if changes.email is not MISSING:
            user.email = changes.email
        if changes.is_active is not MISSING:
            user.is_active = changes.is_active
        if hashed_password is not None:
            user.hashed_password = hashed_password
        email = user.email  # after a failed flush the session can no longer load it
        try:
            session.flush()
        except IntegrityError as exc:
            raise EmailAlreadyRegisteredError(email) from exc
        return self.get(session, user_id)

    def delete(
        self, session: Session, user_id: int, *, if_match: str | None, caller_id: int | None
    ) -> bool:
        """Delete the user; the database deletes their items (ON DELETE CASCADE)."""
        user = _locked(session, User, user_id, if_match, caller_id)
        if user is None:
            return False
        session.delete(user)
        session.flush()
        return True

    def set_password_hash(self, session: Session, user_id: int, hashed_password: str) -> None:
        """Replace an outdated hash after a successful login (``verify_and_update``)."""
        user = session.get(User, user_id, with_for_update=True)
        if user is not None:
            user.hashed_password = hashed_password


class ItemService:
    def get(self, session: Session, item_id: int) -> Versioned[ItemRead] | None:
        row = session.connection().execute(_ITEM_BY_ID, {"item_id": item_id}).first()
        return Versioned(_item_of(row), row.version) if row is not None else None

    def get_page(
        self, session: Session, *, skip: int, limit: int, after_id: int | None = None
    ) -> list[ItemRead]:
        """Items in id order: ``skip`` rows after ``after_id``."""
        page = {"skip": skip, "limit": limit, "after_id": after_id or _FIRST}
        return [_item_of(row) for row in session.connection().execute(_ITEM_PAGE, page)]

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
        return ItemRead(id=item_id, owner_id=user_id, **item_in.model_dump())

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
        item = _locked(session, Item, item_id, if_match, caller_id)
        if item is None:
            return None
        for field, value in changes.model_dump(exclude_unset=True).items():
            setattr(item, field, value)
        session.flush()
        return Versioned(ItemRead.model_validate(item), item.version)

    def delete(
        self, session: Session, item_id: int, *, if_match: str | None, caller_id: int | None
    ) -> bool:
        item = _locked(session, Item, item_id, if_match, caller_id)
        if item is None:
            return False
        session.delete(item)
        session.flush()
        return True


def _item_of(row: Any) -> ItemRead:
    return ItemRead(id=row.id, title=row.title, description=row.description, owner_id=row.owner_id)


def _users_of(rows: Sequence[Any]) -> list[UserRead]:
    """Users from rows of a user LEFT JOIN items, in row order (one row per item, or one
    row with no item for a user without items)."""
    users: dict[int, UserRead] = {}
    for row in rows:
        user = users.get(row.id)
        if user is None:
            user = users[row.id] = UserRead(
                id=row.id, email=row.email, is_active=row.is_active, items=[]
            )
        if row.item_id is not None:
            user.items.append(
                ItemRead(
                    id=row.item_id,
                    title=row.title,
                    description=row.description,
                    owner_id=row.owner_id,
                )
            )
    return list(users.values())


def _locked(
    session: Session, model: type[Row], row_id: int, if_match: str | None, caller_id: int | None
) -> Row | None:
    """The row, locked for this transaction, after the checks: the caller (when auth is on)
    must own it (a user owns itself), and ``If-Match`` must name its version."""
    row = session.get(model, row_id, with_for_update=True)
    if row is None:
        return None
    owner = row.owner_id if isinstance(row, Item) else row.id
    if caller_id is not None and caller_id != owner:
        raise PermissionDeniedError
    check_if_match(if_match, row.version)
    return row
