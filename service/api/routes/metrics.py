"""GET /metrics: Prometheus exposition of service/metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.metrics import render_latest

__all__ = ["router"]

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def metrics() -> Response:
    return Response(render_latest(), media_type=CONTENT_TYPE_LATEST)
