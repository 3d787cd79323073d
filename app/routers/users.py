"""/users: sign up, list, fetch, change and delete users; create their items."""

from typing import Annotated

from dependency_injector.wiring import inject
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import MISSING

from app.deps import AsyncProvide, Auth, Caller, IfMatch, Owner, Public, Read, Write
from app.routers.items import Items
from app.routers.paging import AfterId, Id, Limit, Skip
from app.schemas import Deleted, ItemCreate, ItemRead, UserCreate, UserRead, UserUpdate
from app.services import UserService
from app.web.errors import BODY_ERRORS, responses
from app.web.etags import with_etag
from containers import Container

Users = Annotated[UserService, Depends(AsyncProvide[Container.user_service])]

router = APIRouter(prefix="/users", tags=["users"], responses=responses(503))

_NOT_FOUND = "User not found"


@router.post("/", response_model=UserRead, responses=responses(*BODY_ERRORS), openapi_extra=Public)
@inject
async def create_user(user_in: UserCreate, write: Write, users: Users) -> UserRead:
    """Register a user; 400 if the e-mail is taken."""
    hashed = await users.hash_password(user_in.password)  # before the write transaction
    return await write(users.create, user_in, hashed)


@router.get("/", response_model=list[UserRead], responses=responses(401))
@inject
async def read_users(
    caller: Caller,
    read: Read,
    users: Users,
    skip: Skip = 0,
    limit: Limit = 100,
    after_id: AfterId = None,
) -> list[UserRead]:
    """List users with their items, oldest first."""
    return await read(users.get_page, skip=skip, limit=limit, after_id=after_id)


@router.get("/{user_id}", response_model=UserRead, responses=responses(401, 404))
@inject
async def read_user(
    user_id: Id, caller: Caller, response: Response, read: Read, users: Users
) -> UserRead:
    """Fetch one user with their items; the ETag header carries its version."""
    found = await read(users.get, user_id)
    if found is None:
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return with_etag(response, found)


@router.patch(
    "/{user_id}",
    response_model=UserRead,
    responses=responses(*BODY_ERRORS, 401, 403, 404, 412, 429),
)
@inject
async def update_user(
    user_id: Id,
    changes: UserUpdate,
    owner: Owner,
    request: Request,
    response: Response,
    write: Write,
    users: Users,
    auth: Auth,
    if_match: IfMatch = None,
) -> UserRead:
    """Change the fields sent (e-mail, password, is_active); only the user themself, who
    must send current_password to change the password or the e-mail (with auth on). A new
    password or a deactivation ends every session of the user."""
    credentials = changes.password is not MISSING or changes.email is not MISSING
    if owner == user_id and credentials:  # someone else's row: 403 from the service
        address = request.client.host if request.client else "unknown"
        await auth.confirm_password(owner, changes.current_password, address)
    hashed = None
    if changes.password is not MISSING:
        hashed = await users.hash_password(changes.password)
    found = await write(users.update, user_id, changes, hashed, if_match=if_match, caller_id=owner)
    if found is None:
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return with_etag(response, found)


@router.delete("/{user_id}", responses=responses(401, 403, 404, 412))
@inject
async def delete_user(
    user_id: Id, owner: Owner, write: Write, users: Users, if_match: IfMatch = None
) -> Deleted:
    """Delete the user and their items; only the user themself."""
    if not await write(users.delete, user_id, if_match=if_match, caller_id=owner):
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return Deleted()


@router.post(
    "/{user_id}/items/",
    response_model=ItemRead,
    responses=responses(*BODY_ERRORS, 401, 403, 404),
)
@inject
async def create_item_for_user(
    user_id: Id, item_in: ItemCreate, owner: Owner, write: Write, items: Items
) -> ItemRead:
    """Create an item owned by the user; 404 if there is no such user."""
    item = await write(items.create_for_user, user_id, item_in, caller_id=owner)
    if item is None:
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return item
