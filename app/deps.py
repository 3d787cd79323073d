"""What endpoints receive: one ``Annotated`` alias per injected object, resolved by wiring.

An endpoint decorated with ``@inject`` takes ``read: Read`` or ``users: Users`` and gets the
container's current object. Adding a service means one alias here; ``app.main`` wires this
module and every module of ``app.routers`` at startup.
"""

from typing import Annotated

from dependency_injector.wiring import Provide
from fastapi import Depends, Header
from fastapi.openapi.models import OAuth2 as OAuth2Model
from fastapi.openapi.models import OAuthFlowPassword, OAuthFlows
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import HTTPConnection

from app.auth.authenticator import Authenticator
from app.runtime import runtime_of
from app.services import ItemService, UserService
from app.units.reader import Reader
from app.units.writer import Writer
from containers import Container, container

__all__ = [
    "AsyncProvide",
    "Auth",
    "Caller",
    "CurrentUser",
    "IfMatch",
    "Items",
    "Owner",
    "Read",
    "Users",
    "Write",
]


class AsyncProvide(Provide):  # type: ignore[misc,valid-type]
    """``Provide`` for ``Depends``: FastAPI awaits it on the event loop.

    FastAPI runs a sync dependency, such as the plain marker's ``__call__``, in the thread
    pool: one thread hop per injected object per request, for nothing. ``@inject`` replaces
    the marker with the provided object either way.
    """

    async def __call__(self) -> "AsyncProvide":
        return self


Read = Annotated[Reader, Depends(AsyncProvide[Container.reader])]
Write = Annotated[Writer, Depends(AsyncProvide[Container.writer])]
Users = Annotated[UserService, Depends(AsyncProvide[Container.user_service])]
Items = Annotated[ItemService, Depends(AsyncProvide[Container.item_service])]
Auth = Annotated[Authenticator, Depends(AsyncProvide[Container.authenticator])]


class _BearerCaller(SecurityBase):
    """FastAPI's OAuth2 password-bearer scheme (so OpenAPI and Swagger UI's Authorize button
    know it) that resolves to the user behind the token, in one dependency.

    ``OAuth2PasswordBearer`` plus an injected ``Authenticator`` would be three dependencies,
    each costing FastAPI's dependency solving on every request, also with auth off. The
    container's current ``authenticator`` is looked up at every call, so overrides apply.
    """

    def __init__(self) -> None:
        self.model = OAuth2Model(flows=OAuthFlows(password=OAuthFlowPassword(tokenUrl="token")))
        self.scheme_name = "OAuth2PasswordBearer"

    async def __call__(self, request: HTTPConnection) -> int | None:
        if not runtime_of(request.app).auth_enabled:
            return None
        auth: Authenticator = container.authenticator()
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        return await auth.caller(token if scheme.lower() == "bearer" and token else None)


_caller = _BearerCaller()
_owner = _BearerCaller()  # the same check; a separate dependency marks owner-only routes


async def _current_user(caller: Annotated[int | None, Depends(_caller)]) -> int:
    if caller is None:
        raise LookupError("CurrentUser needs AUTH_ENABLED: mount the route in AUTH_ROUTERS")
    return caller


Caller = Annotated[int | None, Depends(_caller)]
"""The id of the user behind the bearer token, 401 without a valid one; ``None`` when auth
is off."""
Owner = Annotated[int | None, Depends(_owner)]
"""As ``Caller``, and marks the operation owner-only: pass it to the service as
``caller_id`` (which refuses someone else's row with 403)."""
CurrentUser = Annotated[int, Depends(_current_user)]
"""The caller's id, for routes that exist only with auth on (``AUTH_ROUTERS``)."""
IfMatch = Annotated[
    str | None,
    Header(
        description='the ETag the client read ("3"): the change applies only if the row is '
        "still at that version, else 412"
    ),
]
