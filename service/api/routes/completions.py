"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import CallerDep, CompletionsDep
from service.api.streaming import send_answer
from service.serving.protocol import CompletionRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["completions"])


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, completions: CompletionsDep, caller: CallerDep
) -> Response:
    prepared = await completions.prepare(body, caller)
    return await send_answer(request, completions, prepared, caller)
