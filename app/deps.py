"""What endpoints receive: one ``Annotated`` alias per injected object, resolved by wiring.

An endpoint decorated with ``@inject`` takes ``read: Read`` or ``users: Users`` and gets the
container's current object. Adding a service means one alias here; ``app.main`` wires this
module and every module of ``app.routers`` at startup.
"""

from typing import Annotated

from dependency_injector.wiring import Provide, inject
from fastapi import Depends, Header
from fastapi.security import OAuth2PasswordBearer

from app.auth import Authenticator
from app.models import User
from app.services import ItemService, UserService
from app.transactions import Reader, Writer
from containers import Container

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

_bearer = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)


@inject
async def _caller(token: Annotated[str | None, Depends(_bearer)], auth: Auth) -> User | None:
    return await auth.caller(token)


async def _owner_id(caller: Annotated[User | None, Depends(_caller)]) -> int | None:
    return caller.id if caller is not None else None


async def _current_user(caller: Annotated[User | None, Depends(_caller)]) -> User:
    if caller is None:
        raise LookupError("CurrentUser needs AUTH_ENABLED: mount the route in AUTH_ROUTERS")
    return caller


Caller = Annotated[User | None, Depends(_caller)]
"""The user behind the bearer token, 401 without a valid one; ``None`` when auth is off."""
Owner = Annotated[int | None, Depends(_owner_id)]
"""As ``Caller``, and marks the operation owner-only: the caller's id, for the service's
``caller_id`` (which refuses someone else's row with 403); ``None`` when auth is off."""
CurrentUser = Annotated[User, Depends(_current_user)]
"""The caller, for routes that exist only with auth on (``AUTH_ROUTERS``)."""
IfMatch = Annotated[
    str | None,
    Header(
        description='the ETag the client read ("3"): the change applies only if the row is '
        "still at that version, else 412"
    ),
]
