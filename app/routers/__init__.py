"""HTTP routers: parse, call a service, translate ``None`` into 404.

``ROUTERS`` is the one list of them; ``app.main`` includes them in this order and wires
every module of this package.
"""

from fastapi import APIRouter

from app.routers import health, items, metrics, users

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (users.router, items.router, health.router, metrics.router)
