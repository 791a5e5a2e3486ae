"""GET /v1/models: every route of the served model."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ServicesDep
from service.api.protocol import ModelCard, ModelList

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"])


def _card(services: ServicesDep, model_id: str) -> ModelCard:
    route = services.completions.route(model_id)
    return ModelCard(
        id=route.model_id,
        root=route.base_model,
        route=route.kind.value,
        max_model_len=services.engine.info.max_model_len,
    )


@router.get("/models")
async def list_models(services: ServicesDep) -> ModelList:
    return ModelList(data=[_card(services, route.model_id) for route in services.completions.routes])


@router.get("/models/{model_id}")
async def get_model(model_id: str, services: ServicesDep) -> ModelCard:
    return _card(services, model_id)  # unknown ids raise ModelNotFoundError: a 404
