"""The HTTP routes, one module per resource, joined here."""

from fastapi import APIRouter

from service.api.routes import (
    batches,
    chat,
    completions,
    files,
    fine_tuning,
    health,
    metrics,
    models,
    playground,
    responses,
    tokenize,
)

api_router = APIRouter()
for module in (
    health,
    metrics,
    models,
    tokenize,
    completions,
    chat,
    responses,
    files,
    batches,
    fine_tuning,
    playground,
):
    api_router.include_router(module.router)

__all__ = ["api_router"]
