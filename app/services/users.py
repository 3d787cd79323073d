"""Users: sign-up, pages of users with their items, credentials for login, changes."""

from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import MISSING, Secret
from sqlalchemy import bindparam, delete, exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.credentials import AccessClaims, Passwords
from app.emails import canonical_email
from app.exceptions import EmailAlreadyRegisteredError
from app.models import AuthSession, Item, User
from app.outbox.events import created, deleted, updated
from app.schemas import UserCreate, UserRead, UserUpdate, Versioned
from app.services.rows import FIRST, locked, schemas_of

__all__ = ["Credentials", "UserService"]


class Credentials(NamedTuple):
    """What a login needs of a user."""

    id: int
    email: str
    hashed_password: str
    is_active: bool
    credentials_version: int


# Reads run SQLAlchemy Core statements and build the response schemas from the rows: no
# identity map and no ORM instances, a quarter of the CPU of loading entities (and one
# query where selectinload takes two). Writes that change rows use the ORM, for its version
# checks; every method returns schemas, never ORM objects, which stay in the transaction.
_ITEM_OF_USER = (Item.id.label("item_id"), Item.title, Item.description, Item.owner_id)
# _users_of reads rows by position (a Row's attribute costs more than building its dict):
# both statements start with the user's three columns and then its item's four.
_USER_WITH_ITEMS = (
    select(
        User.id,
        User.email,
        User.is_active,
        *_ITEM_OF_USER,
        User.version,
        Item.version.label("item_version"),
    )
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
_CREDENTIALS = select(
    User.id, User.email, User.hashed_password, User.is_active, User.credentials_version
)
_CREDENTIALS_BY_EMAIL = _CREDENTIALS.where(User.email_key == bindparam("email_key"))
_CREDENTIALS_BY_ID = _CREDENTIALS.where(User.id == bindparam("user_id"))
# The token check: one statement, on the primary key (and the session's), whatever ends a
# session (a deletion, a deactivation, a password change, a logout) refuses the token.
_ACTIVE = select(User.id).where(
    User.id == bindparam("user_id"),
    User.is_active,
    User.credentials_version == bindparam("version"),
)
_ACTIVE_IN_SESSION = _ACTIVE.where(
    exists().where(AuthSession.id == bindparam("session_id"), AuthSession.user_id == User.id)
)
_ITEMS_TAG = select(func.count(Item.id), func.max(Item.id), func.sum(Item.version)).where(
    Item.owner_id == bindparam("user_id")
)
_ADD_USER = insert(User).returning(User.id)


class UserService:
    def __init__(self, passwords: Passwords) -> None:
        self._passwords = passwords

    def get(self, session: Session, user_id: int) -> Versioned[UserRead] | None:
        rows = session.connection().execute(_USER_WITH_ITEMS, {"user_id": user_id}).all()
        if not rows:
            return None
        user = _users_of(rows)[0]
        version = rows[0][-2]  # the rows end with the user's version and the item's
        item_versions = [row[-1] for row in rows if row[-1] is not None]
        last_item = user.items[-1].id if user.items else None  # in id order
        return Versioned(user, _tag(version, len(item_versions), last_item, sum(item_versions)))

    def get_page(
        self, session: Session, *, skip: int, limit: int, after_id: int | None = None
    ) -> list[UserRead]:
        """Users in id order, with their items: ``skip`` rows after ``after_id``."""
        page = {"skip": skip, "limit": limit, "after_id": after_id or FIRST}
        return _users_of(session.connection().execute(_USERS_WITH_ITEMS, page).all())

    def get_by_email(self, session: Session, email: str) -> Credentials | None:
        """The user with this address, in any letter case, with or without spaces around."""
        found = {"email_key": canonical_email(email)}
        row = session.connection().execute(_CREDENTIALS_BY_EMAIL, found).first()
        return Credentials(*row) if row is not None else None

    def get_credentials(self, session: Session, user_id: int) -> Credentials | None:
        row = session.connection().execute(_CREDENTIALS_BY_ID, {"user_id": user_id}).first()
        return Credentials(*row) if row is not None else None

    def get_active(self, session: Session, claims: AccessClaims) -> int | None:
        """The user's id, when the token's claims still hold: the user exists, is active, has
        the credentials version the token carries, and the token's session has not ended."""
        statement = _ACTIVE if claims.session_id is None else _ACTIVE_IN_SESSION
        values = {"user_id": claims.user_id, "version": claims.version}
        if claims.session_id is not None:
            values["session_id"] = claims.session_id
        found: int | None = session.connection().scalar(statement, values)
        return found

    async def hash_password(self, password: Secret[str]) -> str:
        """Argon2id, ~0.1 s of CPU: in a worker thread, never inside a write transaction."""
        return await self._passwords.hash(password)

    def create(self, session: Session, user_in: UserCreate, hashed_password: str) -> UserRead:
        values = {
            "email": user_in.email,
            "email_key": canonical_email(user_in.email),
            "hashed_password": hashed_password,
        }
        try:
            user_id = session.connection().scalar(_ADD_USER, values)
        except IntegrityError as exc:
            raise EmailAlreadyRegisteredError(user_in.email) from exc
        return created(
            session, User, UserRead(id=user_id, email=user_in.email, is_active=True, items=[])
        )

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
        """Apply the fields the client sent (the password already hashed). A new password
        or a deactivation ends every session of the user."""
        user = locked(session, User, user_id, if_match, caller_id, tag=self._current_tag)
        if user is None:
            return None
        if changes.email is not MISSING:
            user.email = changes.email  # and its email_key (User._keep_email_key)
        ends_sessions = hashed_password is not None or changes.is_active is False
        if changes.is_active is not MISSING:
            user.is_active = changes.is_active
        if hashed_password is not None:
            user.hashed_password = hashed_password
        if ends_sessions:
            user.credentials_version += 1
            session.execute(delete(AuthSession).where(AuthSession.user_id == user_id))
        email = user.email  # after a failed flush the session can no longer load it
        try:
            session.flush()
        except IntegrityError as exc:
            raise EmailAlreadyRegisteredError(email) from exc
        found = self.get(session, user_id)
        if found is not None:
            updated(session, User, found.value)
        return found

    def delete(
        self, session: Session, user_id: int, *, if_match: str | None, caller_id: int | None
    ) -> bool:
        """Delete the user; the database deletes their items (ON DELETE CASCADE)."""
        user = locked(session, User, user_id, if_match, caller_id, tag=self._current_tag)
        if user is None:
            return False
        gone = self.get(session, user_id)  # as the API showed it, items included
        session.delete(user)
        session.flush()
        if gone is not None:
            deleted(session, User, gone.value)
        return True

    def set_password_hash(self, session: Session, user_id: int, hashed_password: str) -> None:
        """Replace an outdated hash after a successful login (``verify_and_update``)."""
        user = session.get(User, user_id, with_for_update=True)
        if user is not None:
            user.hashed_password = hashed_password

    def _current_tag(self, session: Session, user: User) -> str:
        """The ETag of the user as ``get`` shows it, items included (for ``If-Match``)."""
        count, last, versions = session.execute(_ITEMS_TAG, {"user_id": user.id}).one()
        return _tag(user.version, count, last, versions or 0)


def _tag(version: int, items: int, last_item: int | None, item_versions: int) -> str:
    """A user's representation changes with its row or its items: an item added (the count
    and the newest id), removed (the count) or changed (the versions' sum). Ids are never
    reused and versions only grow, so no two representations share a tag."""
    return str(version) if not items else f"{version}.{items}.{last_item}.{item_versions}"


def _users_of(rows: Sequence[Any]) -> list[UserRead]:
    """Users from rows of a user LEFT JOIN items, in row order (one row per item, or one
    row with no item for a user without items), validated in one call. Each row starts with
    the user's id, email and is_active, then the item's id, title, description and owner."""
    users: dict[int, dict[str, Any]] = {}
    for user_id, email, is_active, item_id, title, description, owner_id, *_ in rows:
        user = users.get(user_id)
        if user is None:
            user = users[user_id] = {
                "id": user_id,
                "email": email,
                "is_active": is_active,
                "items": [],
            }
        if item_id is not None:
            user["items"].append(
                {"id": item_id, "title": title, "description": description, "owner_id": owner_id}
            )
    return schemas_of(UserRead, list(users.values()))
