"""What endpoints receive: one ``Annotated`` alias per injected object, resolved by wiring.

An endpoint decorated with ``@inject`` takes ``read: Read`` or ``users: Users`` and gets the
container's current object. Adding a service means one alias here; ``app.main`` wires every
module of ``app.routers`` at startup.
"""

from typing import Annotated

from dependency_injector.wiring import Provide
from fastapi import Depends

from app.services import ItemService, UserService
from app.transactions import Reader, Writer
from containers import Container

__all__ = ["AsyncProvide", "Items", "Read", "Users", "Write"]


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
