"""The fine-tuning jobs resource (power self-distillation): create, list, retrieve, cancel, events —
each job, and the model it makes, its project's own.

The rules of a new job live here: the base model, the training file (this caller's, uploaded for
fine-tune), hyperparameters the engine can serve. The work itself is the fine-tuning worker's
(service/jobs/tuning.py), whose teacher and evaluation requests go through the completion serving
objects, charged to the key that created the job.

A project may have ``fine_tuning_max_active_per_project`` jobs not yet final (without keys, all
callers are one project); one more is refused with 429 ``too_many_active``, counted and created
under one lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from service.config import Settings
from service.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    ResourceNotFoundError,
    TooManyActiveError,
)
from service.jobs import (
    ACTIVE_TUNING_STATUSES,
    FineTuningJob,
    FineTuningWorker,
    OfflineStore,
    now,
)
from service.metrics import record
from service.serving.caller import Caller, whose
from service.serving.files import FilesServing
from service.serving.models import ModelsServing
from service.serving.pages import list_page
from service.serving.protocol import FineTuningJobRequest

__all__ = ["FineTuningServing"]


class FineTuningServing:
    def __init__(
        self,
        store: OfflineStore,
        files: FilesServing,
        settings: Settings,
        *,
        wake: Callable[[], None],
    ):
        self.store = store
        self.files = files
        self.settings = settings
        self.wake = wake
        # Set once the engine is up: the models served, and the worker (None: no fine-tuning here).
        self.models: ModelsServing | None = None
        self.worker: FineTuningWorker | None = None
        self._creating = asyncio.Lock()  # a project's count and its new job, together

    async def create(self, body: FineTuningJobRequest, caller: Caller) -> dict[str, Any]:
        models = self.models
        if models is None:
            raise EngineUnavailableError("The service is starting; try again shortly.", retry_after=5)
        if self.worker is None:
            raise InvalidRequestError(
                "Fine-tuning is not available here: it needs the in-process engine started able to "
                "load LoRA adapters (POWERSERVE_FINE_TUNING=true).",
                param="model",
                code="fine_tuning_unavailable",
            )
        if body.model != models.base_model:
            raise InvalidRequestError(
                f"Model {body.model!r} cannot be fine-tuned; the base model here is "
                f"{models.base_model!r}.",
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
        most = self.settings.fine_tuning_max_rank
        if hyper.lora_rank > most:
            raise InvalidRequestError(
                f"hyperparameters.lora_rank is {hyper.lora_rank}; the most this engine serves is "
                f"{most}.",
                param="hyperparameters.lora_rank",
            )
        context = models.engine.info.max_model_len
        if hyper.answer_tokens >= context:
            raise InvalidRequestError(
                f"hyperparameters.answer_tokens must be below the context length {context}.",
                param="hyperparameters.answer_tokens",
            )
        await self.files.owned(body.training_file, caller, purpose="fine-tune", param="training_file")
        limit = self.settings.fine_tuning_max_active_per_project
        async with self._creating:
            if limit:
                active = await self.store.active_job_count(caller.project)
                if active >= limit:
                    raise TooManyActiveError(
                        f"Too many active fine-tuning jobs for {whose(caller.project)}: {active} "
                        f"not yet finished, and the limit is {limit}. Try again once one has "
                        "finished, or cancel one (POST /v1/fine_tuning/jobs/{fine_tuning_job_id}"
                        "/cancel)."
                    )
            job = await self.store.add_job(
                model=body.model,
                training_file=body.training_file,
                suffix=body.suffix,
                seed=body.seed if body.seed is not None else now() % (2**31),
                hyperparameters=hyper.model_dump(),
                metadata=body.metadata,
                project=caller.project,
                key_name=caller.key_name,
            )
        await self.store.add_event(job.id, f"Created fine-tuning job {job.id}.")
        self.wake()
        return job.to_json()

    async def list(self, caller: Caller, *, limit: int, after: str | None) -> dict[str, Any]:
        found, more = await self.store.list_jobs(limit=limit, after=after, project=caller.scope)
        return list_page([job.to_json() for job in found], more)

    async def retrieve(self, job_id: str, caller: Caller) -> dict[str, Any]:
        return (await self._owned(job_id, caller)).to_json()

    async def cancel(self, job_id: str, caller: Caller) -> dict[str, Any]:
        job = await self._owned(job_id, caller)
        if job.status == "cancelled":
            return job.to_json()
        if job.final:
            raise InvalidRequestError(
                f"Job {job.id} has {job.status}; only a job not yet finished can be cancelled.",
                param="fine_tuning_job_id",
            )
        cancelled = await self.store.update(
            job.id, only_from=ACTIVE_TUNING_STATUSES, status="cancelled", finished_at=now()
        )
        if cancelled is not None and cancelled.status == "cancelled":
            if self.worker is not None:
                self.worker.cancel(job.id)
            record.fine_tuning_job("cancelled")
            await self.store.add_event(job.id, "Job cancelled.")
        return (cancelled or job).to_json()

    async def events(
        self, job_id: str, caller: Caller, *, limit: int, after: str | None
    ) -> dict[str, Any]:
        job = await self._owned(job_id, caller)
        events, more = await self.store.list_events(job.id, limit=limit, after=after)
        return {"object": "list", "data": [event.to_json() for event in events], "has_more": more}

    async def _owned(self, job_id: str, caller: Caller) -> FineTuningJob:
        job = await self.store.get_job(job_id)
        if job is None or not caller.sees(job.project):
            raise ResourceNotFoundError("fine-tuning job", job_id, param="fine_tuning_job_id")
        return job
