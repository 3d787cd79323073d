"""/token, /logout and /users/me: OAuth2's password and refresh grants, mounted when
AUTH_ENABLED is on."""

from typing import Annotated

from dependency_injector.wiring import inject
from fastapi import APIRouter, Form, Request
from fastapi.security.utils import get_authorization_scheme_param

from app.deps import Auth, CurrentUser, Public, Read
from app.exceptions import NotAuthenticatedError
from app.routers.users import Users
from app.schemas import Deleted, LoginForm, Token, UserRead
from app.web.errors import BODY_ERRORS, responses

AUTH_ONLY = True
"""Mounted only with AUTH_ENABLED on, before the other routers (``app.routers.mount``)."""

router = APIRouter(tags=["auth"], responses=responses(503))


@router.post("/token", responses=responses(*BODY_ERRORS, 401, 429), openapi_extra=Public)
@inject
async def login(form: Annotated[LoginForm, Form()], request: Request, auth: Auth) -> Token:
    """Exchange an e-mail (``username``) and password, or a refresh token
    (``grant_type=refresh_token``), for an access token and a new refresh token; 429 after
    too many failures for the e-mail or attempts from the client's address."""
    if form.grant_type == "refresh_token":
        assert form.refresh_token is not None  # LoginForm checks it
        pair = await auth.refresh(form.refresh_token)
    else:
        assert form.username is not None
        assert form.password is not None
        address = request.client.host if request.client else "unknown"
        pair = await auth.login(form.username, form.password, address)
    return Token(**pair._asdict())


@router.post("/logout", responses=responses(401))
@inject
async def logout(me: CurrentUser, request: Request, auth: Auth) -> Deleted:
    """End the caller's session: this access token and its refresh token stop working;
    other sessions of the user go on."""
    _, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    await auth.logout(token)
    return Deleted()


@router.get("/users/me", response_model=UserRead, responses=responses(401))
@inject
async def read_me(me: CurrentUser, read: Read, users: Users) -> UserRead:
    """The caller, with their items."""
    found = await read(users.get, me)
    if found is None:  # deleted since its token was checked
        raise NotAuthenticatedError("Could not validate credentials")
    return found.value
