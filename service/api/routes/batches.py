"""The Batch API: POST /v1/batches, GET /v1/batches[/{id}], POST /v1/batches/{id}/cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from service.api.deps import BatchesDep, CallerDep
from service.serving.protocol import BatchCreateRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["batches"])


@router.post("/batches")
async def create_batch(
    body: BatchCreateRequest, batches: BatchesDep, caller: CallerDep
) -> dict[str, Any]:
    return await batches.create(body, caller)


@router.get("/batches")
async def list_batches(
    batches: BatchesDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    return await batches.list(caller, limit=limit, after=after)


@router.get("/batches/{batch_id}")
async def retrieve_batch(batch_id: str, batches: BatchesDep, caller: CallerDep) -> dict[str, Any]:
    return await batches.retrieve(batch_id, caller)


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, batches: BatchesDep, caller: CallerDep) -> dict[str, Any]:
    return await batches.cancel(batch_id, caller)
