"""/users: create, list and fetch users; create their items."""

from collections.abc import Sequence

from dependency_injector.wiring import inject
from fastapi import APIRouter, HTTPException

from app.deps import Items, Read, Users, Write
from app.models import Item, User
from app.routers.paging import Id, Limit, Skip
from app.schemas import ItemCreate, ItemRead, UserCreate, UserRead

router = APIRouter(prefix="/users", tags=["users"])


@router.post("/", response_model=UserRead)
@inject
async def create_user(user_in: UserCreate, write: Write, users: Users) -> User:
    """Register a user; 400 if the e-mail is taken."""
    hashed = await users.hash_password(user_in.password)  # before the write transaction
    return await write(users.create, user_in, hashed)


@router.get("/", response_model=list[UserRead])
@inject
async def read_users(
    read: Read, users: Users, skip: Skip = 0, limit: Limit = 100
) -> Sequence[User]:
    """List users with their items, oldest first."""
    return await read(users.get_page, skip=skip, limit=limit)


@router.get("/{user_id}", response_model=UserRead)
@inject
async def read_user(user_id: Id, read: Read, users: Users) -> User:
    """Fetch one user with their items."""
    user = await read(users.get, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@router.post("/{user_id}/items/", response_model=ItemRead)
@inject
async def create_item_for_user(
    user_id: Id, item_in: ItemCreate, write: Write, items: Items
) -> Item:
    """Create an item owned by the user; 404 if there is no such user."""
    item = await write(items.create_for_user, user_id, item_in)
    if item is None:
        raise HTTPException(status_code=404, detail="User not found")
    return item
