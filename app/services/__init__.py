"""Domain logic, one module per resource, taking a session from the caller and never opening one.

Each method taking a ``Session`` is one unit of database work for ``Read`` / ``Write``
(``app.units``), which run it in a worker thread; the caller owns the transaction.
Updates and deletes lock the row they change and compare ``If-Match`` with its version inside
that transaction (``app.services.rows.locked``).
"""

from app.services.items import ItemService
from app.services.users import Credentials, UserService

__all__ = ["Credentials", "ItemService", "UserService"]
