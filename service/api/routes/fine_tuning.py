"""The fine-tuning jobs API (power self-distillation): POST /v1/fine_tuning/jobs, GET
/v1/fine_tuning/jobs[/{id}], POST /v1/fine_tuning/jobs/{id}/cancel, GET
/v1/fine_tuning/jobs/{id}/events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import get_services, jobs_of, list_page
from service.errors import InvalidRequestError, ResourceNotFoundError
from service.jobs import ACTIVE_TUNING_STATUSES, FineTuningJob, Hyperparameters
from service.jobs.store import now
from service.metrics import record

if TYPE_CHECKING:
    from service.api.jobs import JobsRuntime

__all__ = ["FineTuningJobRequest", "router"]

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])


class FineTuningJobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = (
        None
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    validation_file: str | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None


async def _job(jobs: JobsRuntime, job_id: str) -> FineTuningJob:
    job = await jobs.tuning_store.get_job(job_id)
    if job is None:
        raise ResourceNotFoundError("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


@router.post("/jobs")
async def create_job(request: Request, body: FineTuningJobRequest) -> dict[str, Any]:
    jobs, services = jobs_of(request), get_services(request)
    if jobs.tuning is None:
        raise InvalidRequestError(
            "Fine-tuning is not available here: it needs the in-process engine started able to "
            "load LoRA adapters (POWERSERVE_FINE_TUNING=true).",
            param="model",
            code="fine_tuning_unavailable",
        )
    base = services.engine.info.model_id
    if body.model != base:
        raise InvalidRequestError(
            f"Model {body.model!r} cannot be fine-tuned; the base model here is {base!r}.",
            param="model",
            code="model_not_available",
        )
    if body.validation_file is not None:
        raise InvalidRequestError(
            "validation_file is not supported: a held-out share of training_file is evaluated "
            "(hyperparameters.eval_share).",
            param="validation_file",
        )
    hyper = body.hyperparameters.resolved()
    most = services.settings.fine_tuning_max_rank
    if hyper.lora_rank > most:
        raise InvalidRequestError(
            f"hyperparameters.lora_rank is {hyper.lora_rank}; the most this engine serves is {most}.",
            param="hyperparameters.lora_rank",
        )
    context = services.engine.info.max_model_len
    if hyper.answer_tokens >= context:
        raise InvalidRequestError(
            f"hyperparameters.answer_tokens must be below the context length {context}.",
            param="hyperparameters.answer_tokens",
        )
    file = await jobs.store.get_file(body.training_file)
    if file is None:
        raise ResourceNotFoundError("file", body.training_file, param="training_file")
    if file.purpose != "fine-tune":
        raise InvalidRequestError(
            f"File {file.id} was uploaded for {file.purpose!r}, not 'fine-tune'.",
            param="training_file",
        )
    job = await jobs.tuning_store.add_job(
        model=body.model,
        training_file=body.training_file,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else now() % (2**31),
        hyperparameters=hyper.model_dump(),
        metadata=body.metadata,
    )
    await jobs.tuning_store.add_event(job.id, f"Created fine-tuning job {job.id}.")
    jobs.wake()
    return job.to_json()


@router.get("/jobs")
async def list_jobs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    found, more = await jobs_of(request).tuning_store.list_jobs(limit=limit, after=after)
    return list_page([job.to_json() for job in found], more)


@router.get("/jobs/{fine_tuning_job_id}")
async def retrieve_job(request: Request, fine_tuning_job_id: str) -> dict[str, Any]:
    return (await _job(jobs_of(request), fine_tuning_job_id)).to_json()


@router.post("/jobs/{fine_tuning_job_id}/cancel")
async def cancel_job(request: Request, fine_tuning_job_id: str) -> dict[str, Any]:
    jobs = jobs_of(request)
    job = await _job(jobs, fine_tuning_job_id)
    if job.status == "cancelled":
        return job.to_json()
    if job.final:
        raise InvalidRequestError(
            f"Job {job.id} has {job.status}; only a job not yet finished can be cancelled.",
            param="fine_tuning_job_id",
        )
    cancelled = await jobs.tuning_store.update(
        job.id, only_from=ACTIVE_TUNING_STATUSES, status="cancelled", finished_at=now()
    )
    if cancelled is not None and cancelled.status == "cancelled":
        if jobs.tuning is not None:
            jobs.tuning.cancel(job.id)
        record.fine_tuning_job("cancelled")
        await jobs.tuning_store.add_event(job.id, "Job cancelled.")
    return (cancelled or job).to_json()


@router.get("/jobs/{fine_tuning_job_id}/events")
async def list_events(
    request: Request,
    fine_tuning_job_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    jobs = jobs_of(request)
    job = await _job(jobs, fine_tuning_job_id)
    events, more = await jobs.tuning_store.list_events(job.id, limit=limit, after=after)
    return {"object": "list", "data": [event.to_json() for event in events], "has_more": more}
