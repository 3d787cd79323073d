"""HTTP routers: parse, call a service, translate ``None`` into 404.

``ROUTERS`` and ``AUTH_ROUTERS`` are the one list of them; ``app.main`` includes them in
order and wires every module of this package.
"""

from fastapi import APIRouter

from app.routers import auth, health, items, metrics, users

__all__ = ["AUTH_ROUTERS", "ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (users.router, items.router, health.router, metrics.router)
"""Always mounted, in this order."""
AUTH_ROUTERS: tuple[APIRouter, ...] = (auth.router,)
"""Mounted first when AUTH_ENABLED is on (``/users/me`` must match before ``/users/{id}``);
with it off, the tutorial's contract has no such routes."""
