"""/health: readiness, answered by the database; /health/live: liveness, by the process alone."""

from dependency_injector.wiring import inject
from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.deps import Read
from app.errors import responses
from app.exceptions import ShuttingDownError

router = APIRouter(tags=["health"], responses=responses(503))


class Health(BaseModel):
    status: str


def _ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


@router.get("/health")
@inject
async def health(request: Request, read: Read) -> Health:
    """Readiness for a load balancer: 200 when the database answers, 503 when it does not or
    the process is shutting down."""
    if getattr(request.app.state, "draining", False):
        raise ShuttingDownError
    await read(_ping)
    return Health(status="ok")


@router.get("/health/live")
async def live() -> Health:
    """Liveness for an orchestrator: 200 while the process serves HTTP; no database."""
    return Health(status="ok")
