"""The Batch API: POST /v1/batches, GET /v1/batches[/{id}], POST /v1/batches/{id}/cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.deps import jobs_of, list_page
from service.errors import InvalidRequestError, ResourceNotFoundError
from service.jobs import BATCH_ENDPOINTS, COMPLETION_WINDOWS, BatchRecord

if TYPE_CHECKING:  # the runtime imports the endpoints' preparation from routes
    from service.api.jobs import JobsRuntime

__all__ = ["BatchCreateRequest", "router"]

router = APIRouter(prefix="/v1", tags=["batches"])


class BatchCreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value not in BATCH_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value not in COMPLETION_WINDOWS:
            raise ValueError(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(k) > 64 for k in value)):
            raise ValueError("metadata holds at most 16 keys of at most 64 characters")
        return value


async def _batch(jobs: JobsRuntime, batch_id: str) -> BatchRecord:
    batch = await jobs.store.get_batch(batch_id)
    if batch is None:
        raise ResourceNotFoundError("batch", batch_id, param="batch_id")
    return batch


@router.post("/batches")
async def create_batch(request: Request, body: BatchCreateRequest) -> dict[str, Any]:
    jobs = jobs_of(request)
    file = await jobs.store.get_file(body.input_file_id)
    if file is None:
        raise ResourceNotFoundError("file", body.input_file_id, param="input_file_id")
    if file.purpose != "batch":
        raise InvalidRequestError(
            f"File {file.id} was uploaded for {file.purpose!r}, not 'batch'.", param="input_file_id"
        )
    batch = await jobs.store.add_batch(
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        window_s=COMPLETION_WINDOWS[body.completion_window],
        metadata=body.metadata,
    )
    jobs.wake()
    return batch.to_json()


@router.get("/batches")
async def list_batches(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    batches, more = await jobs_of(request).store.list_batches(limit=limit, after=after)
    return list_page([b.to_json() for b in batches], more)


@router.get("/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> dict[str, Any]:
    return (await _batch(jobs_of(request), batch_id)).to_json()


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    jobs = jobs_of(request)
    batch = await _batch(jobs, batch_id)
    if batch.status in ("validating", "in_progress"):
        cancelled = await jobs.store.set_status(
            batch_id, "cancelling", only_from=("validating", "in_progress")
        )
        batch = cancelled or await _batch(jobs, batch_id)  # moved meanwhile: as it is now
        jobs.wake()
    elif batch.status not in ("cancelling", "cancelled"):
        raise InvalidRequestError(
            f"Batch {batch_id} is {batch.status}; only a running batch can be cancelled.",
            param="batch_id",
        )
    return batch.to_json()
