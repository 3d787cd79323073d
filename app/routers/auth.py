"""/token and /users/me: OAuth2's password flow, mounted when AUTH_ENABLED is on."""

from typing import Annotated

from dependency_injector.wiring import inject
from fastapi import APIRouter, Form

from app.deps import Auth, CurrentUser, Read, Users
from app.errors import BODY_ERRORS, responses
from app.exceptions import NotAuthenticatedError
from app.models import User
from app.schemas import LoginForm, Token, UserRead

router = APIRouter(tags=["auth"], responses=responses(503))


@router.post("/token", responses=responses(*BODY_ERRORS, 401))
@inject
async def login(form: Annotated[LoginForm, Form()], auth: Auth) -> Token:
    """Exchange an e-mail (``username``) and password for a bearer token."""
    return Token(access_token=await auth.login(form.username, form.password))


@router.get("/users/me", response_model=UserRead, responses=responses(401))
@inject
async def read_me(me: CurrentUser, read: Read, users: Users) -> User:
    """The caller, with their items."""
    user = await read(users.get, me.id)
    if user is None:  # deleted since its token was checked
        raise NotAuthenticatedError("Could not validate credentials")
    return user
