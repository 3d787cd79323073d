"""Test doubles of the services, for tests that need a unit of work to stay in flight."""

import threading

from sqlalchemy.orm import Session

from app.schemas import UserRead
from app.services import UserService
from containers import container

__all__ = ["BlockingReads"]


class BlockingReads(UserService):
    """``GET /users/`` that holds its gate slot and its connection, like a slow query, until
    ``release`` is set (30 s at most); ``entered`` is set once it holds them."""

    def __init__(self) -> None:
        super().__init__(container.passwords())
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_page(
        self, session: Session, *, skip: int, limit: int, after_id: int | None = None
    ) -> list[UserRead]:
        self.entered.set()
        self.release.wait(timeout=30)
        return super().get_page(session, skip=skip, limit=limit, after_id=after_id)
