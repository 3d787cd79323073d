"""/metrics: Prometheus text format, every worker's figures; 404 unless METRICS_ENABLED.

With ``METRICS_TOKEN`` set, a scrape needs ``Authorization: Bearer <METRICS_TOKEN>``
(Prometheus' ``authorization`` scrape option); with auth on and no ``METRICS_TOKEN``, the
endpoint is not served (404): the figures say who uses the service, and how.
"""

import hmac

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.security.utils import get_authorization_scheme_param

from app.deps import Public
from app.exceptions import NotAuthenticatedError
from app.observability import metrics
from app.runtime import runtime_of

router = APIRouter(tags=["operations"])


# Public to the API's bearer tokens: METRICS_ENABLED and METRICS_TOKEN guard it.
@router.get("/metrics", include_in_schema=False, response_class=Response, openapi_extra=Public)
async def prometheus_metrics(request: Request) -> Response:
    """The Prometheus exposition of the app's metrics."""
    runtime = runtime_of(request.app)
    token = runtime.metrics_token
    if not runtime.metrics_enabled or (token is None and runtime.auth_enabled):
        raise HTTPException(status_code=404, detail="Not Found")
    if token is not None:
        scheme, sent = get_authorization_scheme_param(request.headers.get("Authorization"))
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.encode(), expected):
            raise NotAuthenticatedError("Not authenticated")
    # Reading every worker's files is disk work: off the event loop.
    body = await anyio.to_thread.run_sync(metrics.exposition)
    return Response(body, media_type=metrics.CONTENT_TYPE)
