"""What one app knows about its own run: set by ``create_app`` and the lifespan, read by the
middleware (which get it at construction) and the routes (``runtime_of(request.app)``)."""

from dataclasses import dataclass

from pydantic import SecretStr

__all__ = ["Runtime", "runtime_of"]


@dataclass(slots=True)
class Runtime:
    auth_enabled: bool = False
    """``AUTH_ENABLED`` when the app was created: it decided the app's routes."""
    read_your_writes: bool = False
    """Replicas were configured when the app was created: its middleware carries WAL
    positions."""
    max_concurrent_requests: int | None = None
    """``MAX_CONCURRENT_REQUESTS`` from startup on; None (nothing shed) before."""
    metrics_enabled: bool = False
    """``METRICS_ENABLED`` from startup on."""
    metrics_token: SecretStr | None = None
    """``METRICS_TOKEN`` from startup on."""
    draining: bool = False
    """SIGTERM (or SIGINT) has reached the process: ``/health`` answers 503."""


def runtime_of(app: object) -> Runtime:
    """The ``Runtime`` of an app that ``create_app`` made (a ``TestClient``'s ``app`` too)."""
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    if not isinstance(runtime, Runtime):
        raise LookupError(f"{app!r} has no Runtime: it was not made by app.main.create_app()")
    return runtime
