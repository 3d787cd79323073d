"""Users and items: the domain logic, taking a session from the caller and never opening one.

Reads take a sync ``Session``; writes take an ``AsyncSession`` (see README, concurrency model).
"""

from collections.abc import Sequence

import anyio.to_thread
from pwdlib import PasswordHash
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, selectinload

from app.models import Item, User
from app.schemas import ItemCreate, UserCreate

__all__ = ["EmailAlreadyRegisteredError", "ItemService", "UserService"]


class EmailAlreadyRegisteredError(Exception):
    """A user with this e-mail exists; the unique constraint decided it."""


class UserService:
    def __init__(self, hasher: PasswordHash) -> None:
        self._hasher = hasher

    def get(self, session: Session, user_id: int) -> User | None:
        return session.get(User, user_id, options=[selectinload(User.items)])

    def list(self, session: Session, *, skip: int, limit: int) -> Sequence[User]:
        query = select(User).options(selectinload(User.items)).order_by(User.id)
        return session.scalars(query.offset(skip).limit(limit)).all()

    async def create(self, session: AsyncSession, user_in: UserCreate) -> User:
        # Hashing is slow on purpose: do it before the transaction, off the event loop.
        hashed = await anyio.to_thread.run_sync(self._hasher.hash, user_in.password)
        user = User(email=user_in.email, hashed_password=hashed, items=[])
        session.add(user)
        try:
            await session.flush()
        except IntegrityError as exc:
            raise EmailAlreadyRegisteredError(user_in.email) from exc
        return user

    def verify_password(self, user: User, password: str) -> bool:
        return self._hasher.verify(password, user.hashed_password)


class ItemService:
    def list(self, session: Session, *, skip: int, limit: int) -> Sequence[Item]:
        return session.scalars(select(Item).order_by(Item.id).offset(skip).limit(limit)).all()

    async def create_for_user(
        self, session: AsyncSession, user_id: int, item_in: ItemCreate
    ) -> Item | None:
        if await session.get(User, user_id) is None:
            return None
        item = Item(**item_in.model_dump(), owner_id=user_id)
        session.add(item)
        await session.flush()
        return item
