"""GET /health: 200 when the engine can serve, 503 (OpenAI error body) when it cannot."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import GatewayDep
from service.errors import EngineUnavailableError

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    """The process serves HTTP (a liveness probe); /health says whether it can serve completions."""
    return {"status": "alive"}


@router.get("/health")
async def health(request: Request, gateway: GatewayDep) -> dict[str, str]:
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:  # SIGTERM: out of the load balancer while it drains
        raise EngineUnavailableError("The service is shutting down.", retry_after=5)
    if gateway.engine is None:
        raise EngineUnavailableError("The service is starting.", retry_after=5)
    await gateway.engine.check_health()  # raises EngineUnavailableError -> 503
    if not gateway.ready:
        raise EngineUnavailableError("The service is starting.", retry_after=5)
    return {"status": "ok"}
