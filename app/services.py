"""Users and items: the domain logic, taking a session from the caller and never opening one.

Each method taking a ``Session`` is one unit of database work for ``Read`` / ``Write``
(``app.transactions``), which run it in a worker thread; the caller owns the transaction.
Updates and deletes lock the row they change (``FOR UPDATE`` on PostgreSQL; SQLite writes
one at a time anyway) and compare ``If-Match`` with its version inside that transaction.
"""

from collections.abc import Sequence
from typing import TypeVar

from pydantic import MISSING, Secret
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from app.etags import check_if_match
from app.exceptions import EmailAlreadyRegisteredError, PermissionDeniedError
from app.models import Item, User
from app.schemas import ItemCreate, ItemUpdate, UserCreate, UserUpdate
from app.security import Passwords

__all__ = ["ItemService", "UserService"]

Row = TypeVar("Row", User, Item)


class UserService:
    def __init__(self, passwords: Passwords) -> None:
        self._passwords = passwords

    def get(self, session: Session, user_id: int) -> User | None:
        return session.get(User, user_id, options=[selectinload(User.items)])

    def get_page(self, session: Session, *, skip: int, limit: int) -> Sequence[User]:
        query = select(User).options(selectinload(User.items)).order_by(User.id)
        return session.scalars(query.offset(skip).limit(limit)).all()

    def get_by_email(self, session: Session, email: str) -> User | None:
        return session.scalar(select(User).where(User.email == email))

    def get_active(self, session: Session, user_id: int) -> User | None:
        """The user, when it exists and is active: whom a token may still speak for."""
        user = session.get(User, user_id)
        return user if user is not None and user.is_active else None

    async def hash_password(self, password: Secret[str]) -> str:
        """Argon2id, ~0.1 s of CPU: in a worker thread, never inside a write transaction."""
        return await self._passwords.hash(password)

    def create(self, session: Session, user_in: UserCreate, hashed_password: str) -> User:
        user = User(email=user_in.email, hashed_password=hashed_password, items=[])
        session.add(user)
        return _flush_user(session, user)

    def update(
        self,
        session: Session,
        user_id: int,
        changes: UserUpdate,
        hashed_password: str | None,
        *,
        if_match: str | None,
        caller_id: int | None,
    ) -> User | None:
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
        _flush_user(session, user)
        session.refresh(user, ["items"])
        return user

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
    def get(self, session: Session, item_id: int) -> Item | None:
        return session.get(Item, item_id)

    def get_page(self, session: Session, *, skip: int, limit: int) -> Sequence[Item]:
        return session.scalars(select(Item).order_by(Item.id).offset(skip).limit(limit)).all()

    def create_for_user(
        self, session: Session, user_id: int, item_in: ItemCreate, *, caller_id: int | None
    ) -> Item | None:
        if session.get(User, user_id) is None:
            return None
        if caller_id is not None and caller_id != user_id:
            raise PermissionDeniedError
        item = Item(**item_in.model_dump(), owner_id=user_id)
        session.add(item)
        session.flush()
        return item

    def update(
        self,
        session: Session,
        item_id: int,
        changes: ItemUpdate,
        *,
        if_match: str | None,
        caller_id: int | None,
    ) -> Item | None:
        """Apply the fields the client sent; ``caller_id``, when given, must own the item."""
        item = _locked(session, Item, item_id, if_match, caller_id)
        if item is None:
            return None
        for field, value in changes.model_dump(exclude_unset=True).items():
            setattr(item, field, value)
        session.flush()
        return item

    def delete(
        self, session: Session, item_id: int, *, if_match: str | None, caller_id: int | None
    ) -> bool:
        item = _locked(session, Item, item_id, if_match, caller_id)
        if item is None:
            return False
        session.delete(item)
        session.flush()
        return True


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


def _flush_user(session: Session, user: User) -> User:
    email = user.email  # after a failed flush the session can no longer load it
    try:
        session.flush()
    except IntegrityError as exc:
        raise EmailAlreadyRegisteredError(email) from exc
    return user
