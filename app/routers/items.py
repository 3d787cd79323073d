"""/items: list every item."""

from collections.abc import Sequence
from typing import Annotated

from dependency_injector.wiring import inject
from fastapi import APIRouter, Depends

from app.deps import AsyncProvide, Read
from app.models import Item
from app.routers.paging import Limit, Skip
from app.schemas import ItemRead
from app.services import ItemService
from containers import Container

router = APIRouter(prefix="/items", tags=["items"])


@router.get("/", response_model=list[ItemRead])
@inject
async def read_items(
    read: Read,
    items: Annotated[ItemService, Depends(AsyncProvide[Container.item_service])],
    skip: Skip = 0,
    limit: Limit = 100,
) -> Sequence[Item]:
    """List items, oldest first."""
    return await read(items.list, skip=skip, limit=limit)
