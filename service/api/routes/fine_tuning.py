"""The fine-tuning jobs API (power self-distillation): POST /v1/fine_tuning/jobs, GET
/v1/fine_tuning/jobs[/{id}], POST /v1/fine_tuning/jobs/{id}/cancel, GET
/v1/fine_tuning/jobs/{id}/events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from service.api.deps import CallerDep, FineTuningDep
from service.serving.protocol import FineTuningJobRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])


@router.post("/jobs")
async def create_job(
    body: FineTuningJobRequest, fine_tuning: FineTuningDep, caller: CallerDep
) -> dict[str, Any]:
    return await fine_tuning.create(body, caller)


@router.get("/jobs")
async def list_jobs(
    fine_tuning: FineTuningDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    return await fine_tuning.list(caller, limit=limit, after=after)


@router.get("/jobs/{fine_tuning_job_id}")
async def retrieve_job(
    fine_tuning_job_id: str, fine_tuning: FineTuningDep, caller: CallerDep
) -> dict[str, Any]:
    return await fine_tuning.retrieve(fine_tuning_job_id, caller)


@router.post("/jobs/{fine_tuning_job_id}/cancel")
async def cancel_job(
    fine_tuning_job_id: str, fine_tuning: FineTuningDep, caller: CallerDep
) -> dict[str, Any]:
    return await fine_tuning.cancel(fine_tuning_job_id, caller)


@router.get("/jobs/{fine_tuning_job_id}/events")
async def list_events(
    fine_tuning_job_id: str,
    fine_tuning: FineTuningDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    return await fine_tuning.events(fine_tuning_job_id, caller, limit=limit, after=after)
