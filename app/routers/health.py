"""/health: readiness, answered by the database; /health/live: liveness, by the process alone."""

from dependency_injector.wiring import inject
from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.deps import Public, Read
from app.exceptions import DATABASE_FAILURES, ShuttingDownError
from app.replicas.replica_set import ReplicaSet
from app.runtime import runtime_of
from app.units.reader import Reader
from app.web.errors import responses

router = APIRouter(tags=["health"], responses=responses(503))


class EngineHealth(BaseModel):
    up: bool
    lag_seconds: float | None


class Health(BaseModel):
    status: str
    """``ok``; with replicas, ``read_only`` while the primary is down and a replica serves."""
    engines: dict[str, EngineHealth] | None = None
    """With replicas only: ``primary``, ``replica-1``, ..."""


def _ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


@router.get("/health", response_model_exclude_unset=True, openapi_extra=Public)
@inject
async def health(request: Request, read: Read) -> Health:
    """Readiness for a load balancer: 200 when the database answers, 503 when it does not or
    the process is shutting down. With replicas, the status is read_only (still 200) while
    the primary is down but a replica serves reads, and engines says how each one is."""
    if runtime_of(request.app).draining:
        raise ShuttingDownError
    if read.replicas is None:
        await read(_ping)
        return Health(status="ok")
    return await _with_replicas(read, read.replicas)


async def _with_replicas(read: Reader, replicas: ReplicaSet) -> Health:
    failure: Exception | None = None
    try:
        await read.on_primary(_ping)
    except DATABASE_FAILURES as error:
        failure = error  # writes fail; reads may not
    engines = {"primary": EngineHealth(up=failure is None, lag_seconds=None if failure else 0.0)}
    for replica in replicas.replicas:
        engines[replica.name] = EngineHealth(up=replica.up, lag_seconds=replica.lag)
    if failure is None:
        return Health(status="ok", engines=engines)
    if any(replicas.serves(replica) for replica in replicas.replicas):
        return Health(status="read_only", engines=engines)
    raise failure


@router.get("/health/live", response_model_exclude_unset=True, openapi_extra=Public)
async def live() -> Health:
    """Liveness for an orchestrator: 200 while the process serves HTTP; no database."""
    return Health(status="ok")
