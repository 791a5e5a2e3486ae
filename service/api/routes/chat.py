"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import CallerDep, ChatDep
from service.api.streaming import send_answer
from service.serving.protocol import ChatCompletionRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["chat"])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, chat: ChatDep, caller: CallerDep
) -> Response:
    prepared = await chat.prepare(body, caller)
    return await send_answer(request, chat, prepared, caller)
