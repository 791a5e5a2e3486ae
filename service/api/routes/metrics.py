"""GET /metrics: Prometheus exposition of service/metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.metrics import ENGINE_REQUESTS, render_latest

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    engine = request.app.state.engine
    ENGINE_REQUESTS.set(engine.num_running_requests() if engine is not None else 0)
    return Response(render_latest(), media_type=CONTENT_TYPE_LATEST)
