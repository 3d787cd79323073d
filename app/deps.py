"""What endpoints share: the units of work, the access policies, ``If-Match``.

An endpoint decorated with ``@inject`` takes ``read: Read`` or ``write: Write`` and gets the
container's current object (``Write``: wrapped in a ``KeyedWrite`` when a POST or PATCH
carries an ``Idempotency-Key``, docs/idempotency.md); an alias used by one router (``Users``,
``Items``) lives beside it, as ``Annotated[UserService,
Depends(AsyncProvide[Container.user_service])]``. The lifespan wires every module of
``app.routers``.

With AUTH_ENABLED on, a route says who may call it: ``openapi_extra=Public`` (anyone),
``caller: Caller`` (any valid token), ``owner: Owner`` (the row's owner; passed to the service
as ``caller_id``). A route that says nothing needs a valid token (``app.routers.mount``).
"""

from typing import Annotated, Any, Literal

from dependency_injector.wiring import Provide
from fastapi import Depends, Header, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.models import OAuth2 as OAuth2Model
from fastapi.openapi.models import OAuthFlowPassword, OAuthFlows
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import HTTPConnection

from app.auth.authenticator import Authenticator
from app.runtime import runtime_of
from app.units.idempotency import WriteUnit
from app.units.reader import Reader
from app.web.idempotency import HEADER, KEYED_METHODS, keyed_write
from containers import Container, container

__all__ = [
    "REQUIRE_TOKEN",
    "AsyncProvide",
    "Auth",
    "Caller",
    "CurrentUser",
    "IfMatch",
    "Owner",
    "Policy",
    "Public",
    "Read",
    "Write",
    "policy",
]


class AsyncProvide(Provide):  # type: ignore[misc,valid-type]
    """``Provide`` for ``Depends``: FastAPI awaits it on the event loop.

    FastAPI runs a sync dependency, such as the plain marker's ``__call__``, in the thread
    pool: one thread hop per injected object per request, for nothing. ``@inject`` replaces
    the marker with the provided object either way.
    """

    async def __call__(self) -> "AsyncProvide":
        return self


_CALLER = "app.caller_id"
"""Where ``_BearerCaller`` leaves the caller's id in the request's scope, for ``KeyedWrite``."""


async def _write(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="a key of the client's choosing, unique per operation (a UUID): "
            "a retry with the same key gets the first answer again (docs/idempotency.md)",
        ),
    ] = None,
) -> WriteUnit:
    """The container's ``writer``; for a POST or PATCH with a key, wrapped so that the key and
    the answer are stored in the transaction of the change."""
    writer: WriteUnit = container.writer()
    if idempotency_key is None or request.method not in KEYED_METHODS:
        return writer
    return keyed_write(
        writer, container.idempotency_keys(), request, lambda: request.scope.get(_CALLER)
    )


Read = Annotated[Reader, Depends(AsyncProvide[Container.reader])]
Write = Annotated[WriteUnit, Depends(_write)]
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
        caller = await auth.caller(token if scheme.lower() == "bearer" and token else None)
        request.scope[_CALLER] = caller
        return caller


_caller = _BearerCaller()
_owner = _BearerCaller()  # the same check; a separate dependency marks owner-only routes


async def _current_user(caller: Annotated[int | None, Depends(_caller)]) -> int:
    if caller is None:
        raise LookupError("CurrentUser needs AUTH_ENABLED: set AUTH_ONLY = True in its module")
    return caller


Public: dict[str, Any] = {"security": []}
"""``@router.get(..., openapi_extra=Public)``: anyone may call the route, also with
AUTH_ENABLED on. OpenAPI's way to say that an operation needs no credentials; a marker the
app reads when it mounts the route, not a dependency, which would cost every request."""
REQUIRE_TOKEN = Depends(_caller)
"""What ``app.routers.mount`` adds, with AUTH_ENABLED on, to a route that declares no policy."""


Caller = Annotated[int | None, Depends(_caller)]
"""The id of the user behind the bearer token, 401 without a valid one; ``None`` when auth
is off."""
Owner = Annotated[int | None, Depends(_owner)]
"""As ``Caller``, and marks the operation owner-only: pass it to the service as
``caller_id`` (which refuses someone else's row with 403)."""
CurrentUser = Annotated[int, Depends(_current_user)]
"""The caller's id, for routes that exist only with auth on (a module with ``AUTH_ONLY``)."""
IfMatch = Annotated[
    str | None,
    Header(
        description='the ETag the client read ("3"): the change applies only if the row is '
        "still at that version, else 412"
    ),
]


Policy = Literal["public", "authenticated", "owner"]


def policy(dependant: Dependant, openapi_extra: dict[str, Any] | None) -> Policy | None:
    """Who may call the operation with AUTH_ENABLED on, read off its dependencies and its
    ``openapi_extra``: ``owner`` (``Owner``), ``authenticated`` (``Caller``, ``CurrentUser``),
    ``public`` (``Public``); ``None`` when it declares none."""
    calls: set[Any] = set()
    pending = list(dependant.dependencies)
    while pending:
        dependency = pending.pop()
        calls.add(dependency.call)
        pending.extend(dependency.dependencies)
    if _owner in calls:
        return "owner"
    if _caller in calls:
        return "authenticated"
    if openapi_extra is not None and openapi_extra.get("security") == []:
        return "public"
    return None
