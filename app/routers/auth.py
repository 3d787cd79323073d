"""/token and /users/me: OAuth2's password flow, mounted when AUTH_ENABLED is on."""

from typing import Annotated

from dependency_injector.wiring import inject
from fastapi import APIRouter, Depends, Form, Request

from app.auth.authenticator import Authenticator
from app.deps import AsyncProvide, CurrentUser, Public, Read
from app.exceptions import NotAuthenticatedError
from app.routers.users import Users
from app.schemas import LoginForm, Token, UserRead
from app.web.errors import BODY_ERRORS, responses
from containers import Container

AUTH_ONLY = True
"""Mounted only with AUTH_ENABLED on, before the other routers (``app.routers.mount``)."""

Auth = Annotated[Authenticator, Depends(AsyncProvide[Container.authenticator])]

router = APIRouter(tags=["auth"], responses=responses(503))


@router.post("/token", responses=responses(*BODY_ERRORS, 401, 429), openapi_extra=Public)
@inject
async def login(form: Annotated[LoginForm, Form()], request: Request, auth: Auth) -> Token:
    """Exchange an e-mail (``username``) and password for a bearer token; 429 after too many
    failures for the e-mail or attempts from the client's address."""
    address = request.client.host if request.client else "unknown"
    return Token(access_token=await auth.login(form.username, form.password, address))


@router.get("/users/me", response_model=UserRead, responses=responses(401))
@inject
async def read_me(me: CurrentUser, read: Read, users: Users) -> UserRead:
    """The caller, with their items."""
    found = await read(users.get, me)
    if found is None:  # deleted since its token was checked
        raise NotAuthenticatedError("Could not validate credentials")
    return found.value
