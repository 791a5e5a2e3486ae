"""The Responses API: POST /v1/responses, and retrieve, delete, cancel and input_items of the
responses it stored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.api.deps import CallerDep, ResponsesDep
from service.api.streaming import send_answer
from service.serving.responses_protocol import ResponseCreateRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["responses"])


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponseCreateRequest, request: Request, responses: ResponsesDep, caller: CallerDep
) -> Response:
    prepared = await responses.prepare(body, caller)
    return await send_answer(request, responses, prepared, caller, named_events=True)


@router.get("/responses/{response_id}")
async def retrieve_response(
    response_id: str, responses: ResponsesDep, caller: CallerDep
) -> dict[str, Any]:
    return await responses.retrieve(response_id, caller)


@router.delete("/responses/{response_id}")
async def delete_response(
    response_id: str, responses: ResponsesDep, caller: CallerDep
) -> dict[str, Any]:
    return await responses.delete(response_id, caller)


@router.post("/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, responses: ResponsesDep, caller: CallerDep) -> None:
    await responses.cancel(response_id, caller)


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    responses: ResponsesDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    return await responses.input_items(
        response_id, caller, limit=limit, ascending=order == "asc", after=after
    )
