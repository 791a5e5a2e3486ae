"""GET /v1/models: every route of the served model (and the caller's project's fine-tuned ones)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import CallerDep, ModelsDep
from service.serving.protocol import ModelCard, ModelList

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
async def list_models(models: ModelsDep, caller: CallerDep) -> ModelList:
    return models.list(caller)


@router.get("/models/{model_id}")
async def get_model(model_id: str, models: ModelsDep, caller: CallerDep) -> ModelCard:
    return models.retrieve(model_id, caller)  # unknown ids raise ModelNotFoundError: a 404
