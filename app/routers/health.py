"""/health: readiness, answered by the database."""

from dependency_injector.wiring import inject
from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.deps import Read
from app.errors import responses

router = APIRouter(tags=["health"], responses=responses(503))


class Health(BaseModel):
    status: str


def _ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


@router.get("/health")
@inject
async def health(read: Read) -> Health:
    """200 when the database answers, 503 otherwise."""
    await read(_ping)
    return Health(status="ok")
