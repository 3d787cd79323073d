"""/metrics: Prometheus text format, every worker's figures; 404 unless METRICS_ENABLED."""

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, Response

from app.deps import Public
from app.observability import metrics
from app.runtime import runtime_of

router = APIRouter(tags=["operations"])


# Public to bearer tokens: METRICS_ENABLED guards it.
@router.get("/metrics", include_in_schema=False, response_class=Response, openapi_extra=Public)
async def prometheus_metrics(request: Request) -> Response:
    """The Prometheus exposition of the app's metrics."""
    if not runtime_of(request.app).metrics_enabled:
        raise HTTPException(status_code=404, detail="Not Found")
    # Reading every worker's files is disk work: off the event loop.
    body = await anyio.to_thread.run_sync(metrics.exposition)
    return Response(body, media_type=metrics.CONTENT_TYPE)
