"""/items: list every item."""

from collections.abc import Sequence

from dependency_injector.wiring import inject
from fastapi import APIRouter

from app.deps import Items, Read
from app.models import Item
from app.routers.paging import Limit, Skip
from app.schemas import ItemRead

router = APIRouter(prefix="/items", tags=["items"])


@router.get("/", response_model=list[ItemRead])
@inject
async def read_items(
    read: Read,
    items: Items,
    skip: Skip = 0,
    limit: Limit = 100,
) -> Sequence[Item]:
    """List items, oldest first."""
    return await read(items.get_page, skip=skip, limit=limit)
