"""Users and items: the domain logic, taking a session from the caller and never opening one.

Each method is one unit of database work for ``app.deps.Read`` / ``Write``, which run it in a
worker thread; the caller owns the transaction. Password hashing is the one async method:
it is slow on purpose, so it runs in a thread of its own before the write transaction.
"""

from collections.abc import Sequence

import anyio.to_thread
from pwdlib import PasswordHash
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from app.exceptions import EmailAlreadyRegisteredError
from app.models import Item, User
from app.schemas import ItemCreate, UserCreate

__all__ = ["ItemService", "UserService"]


class UserService:
    def __init__(self, hasher: PasswordHash) -> None:
        self._hasher = hasher

    def get(self, session: Session, user_id: int) -> User | None:
        return session.get(User, user_id, options=[selectinload(User.items)])

    def get_page(self, session: Session, *, skip: int, limit: int) -> Sequence[User]:
        query = select(User).options(selectinload(User.items)).order_by(User.id)
        return session.scalars(query.offset(skip).limit(limit)).all()

    async def hash_password(self, password: str) -> str:
        """Argon2id, ~0.1 s of CPU: in a worker thread, never inside a write transaction."""
        return await anyio.to_thread.run_sync(self._hasher.hash, password)

    def create(self, session: Session, user_in: UserCreate, hashed_password: str) -> User:
        user = User(email=user_in.email, hashed_password=hashed_password, items=[])
        session.add(user)
        try:
            session.flush()
        except IntegrityError as exc:
            raise EmailAlreadyRegisteredError(user_in.email) from exc
        return user

    def verify_password(self, user: User, password: str) -> bool:
        return self._hasher.verify(password, user.hashed_password)


class ItemService:
    def get_page(self, session: Session, *, skip: int, limit: int) -> Sequence[Item]:
        return session.scalars(select(Item).order_by(Item.id).offset(skip).limit(limit)).all()

    def create_for_user(self, session: Session, user_id: int, item_in: ItemCreate) -> Item | None:
        if session.get(User, user_id) is None:
            return None
        item = Item(**item_in.model_dump(), owner_id=user_id)
        session.add(item)
        session.flush()
        return item
