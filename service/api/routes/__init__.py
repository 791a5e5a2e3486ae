"""The HTTP routes, one module per resource, joined here."""

from fastapi import APIRouter

from service.api.routes import chat, completions, health, metrics, models

api_router = APIRouter()
for module in (health, metrics, models, completions, chat):
    api_router.include_router(module.router)

__all__ = ["api_router"]
