"""/items: list, fetch, change and delete items."""

from typing import Annotated

from dependency_injector.wiring import inject
from fastapi import APIRouter, Depends, HTTPException, Response

from app.deps import AsyncProvide, Caller, IfMatch, Owner, Read, Write
from app.routers.paging import AfterId, Id, Limit, Skip
from app.schemas import Deleted, ItemRead, ItemUpdate
from app.services import ItemService
from app.web.errors import BODY_ERRORS, responses
from app.web.etags import with_etag
from containers import Container

Items = Annotated[ItemService, Depends(AsyncProvide[Container.item_service])]

router = APIRouter(prefix="/items", tags=["items"], responses=responses(503))

_NOT_FOUND = "Item not found"


@router.get("/", response_model=list[ItemRead], responses=responses(401))
@inject
async def read_items(
    caller: Caller,
    read: Read,
    items: Items,
    skip: Skip = 0,
    limit: Limit = 100,
    after_id: AfterId = None,
) -> list[ItemRead]:
    """List items, oldest first; after_id pages in constant time, however deep."""
    return await read(items.get_page, skip=skip, limit=limit, after_id=after_id)


@router.get("/{item_id}", response_model=ItemRead, responses=responses(401, 404))
@inject
async def read_item(
    item_id: Id, caller: Caller, response: Response, read: Read, items: Items
) -> ItemRead:
    """Fetch one item; the ETag header carries its version."""
    found = await read(items.get, item_id)
    if found is None:
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return with_etag(response, found)


@router.patch(
    "/{item_id}",
    response_model=ItemRead,
    responses=responses(*BODY_ERRORS, 401, 403, 404, 412),
)
@inject
async def update_item(
    item_id: Id,
    changes: ItemUpdate,
    owner: Owner,
    response: Response,
    write: Write,
    items: Items,
    if_match: IfMatch = None,
) -> ItemRead:
    """Change the fields sent (title, description: null clears it); only the owner."""
    found = await write(items.update, item_id, changes, if_match=if_match, caller_id=owner)
    if found is None:
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return with_etag(response, found)


@router.delete("/{item_id}", responses=responses(401, 403, 404, 412))
@inject
async def delete_item(
    item_id: Id, owner: Owner, write: Write, items: Items, if_match: IfMatch = None
) -> Deleted:
    """Delete the item; only its owner."""
    if not await write(items.delete, item_id, if_match=if_match, caller_id=owner):
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return Deleted()
