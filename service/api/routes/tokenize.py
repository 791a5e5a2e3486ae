"""POST /tokenize, POST /detokenize and GET /version, where ``vllm serve`` has them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service import __version__
from service.api.deps import CallerDep, TokenizeDep
from service.serving.tokenize import DetokenizeRequest, TokenizeRequest

__all__ = ["router"]

router = APIRouter(tags=["tokenize"])


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, serving: TokenizeDep, caller: CallerDep) -> dict[str, Any]:
    return await serving.tokenize(body, caller)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, serving: TokenizeDep, caller: CallerDep) -> dict[str, str]:
    return await serving.detokenize(body, caller)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}
