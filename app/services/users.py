"""Users: sign-up, pages of users with their items, credentials for login, changes."""

from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import MISSING, Secret
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.credentials import Passwords
from app.exceptions import EmailAlreadyRegisteredError
from app.models import Item, User
from app.schemas import ItemRead, UserCreate, UserRead, UserUpdate, Versioned
from app.services.rows import FIRST, locked

__all__ = ["Credentials", "UserService"]


class Credentials(NamedTuple):
    """What a login needs of a user."""

    id: int
    hashed_password: str
    is_active: bool


# Reads run SQLAlchemy Core statements and build the response schemas from the rows: no
# identity map and no ORM instances, a quarter of the CPU of loading entities (and one
# query where selectinload takes two). Writes that change rows use the ORM, for its version
# checks; every method returns schemas, never ORM objects, which stay in the transaction.
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
_ADD_USER = insert(User).returning(User.id)


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
        page = {"skip": skip, "limit": limit, "after_id": after_id or FIRST}
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
        user = locked(session, User, user_id, if_match, caller_id)
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
        user = locked(session, User, user_id, if_match, caller_id)
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
