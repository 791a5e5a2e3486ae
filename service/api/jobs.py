"""The gateway's offline work: the job store, opened at start-up, and the batch and fine-tuning
workers, started once the engine is up. A batch line is answered here exactly as its HTTP endpoint
answers a body: the same request models, the same preparation, the same request path and the same
error bodies."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from service.api.errors import error_body, status_of, validation_error_body
from service.api.protocol import ChatCompletionRequest, CompletionRequest
from service.api.routes.chat import prepare_chat
from service.api.routes.completions import prepare_completion
from service.api.serving import Prepared, answer_body
from service.config import Settings
from service.engines.base import scheduling_priority
from service.errors import InvalidRequestError, PowerserveError
from service.jobs import (
    BatchWorker,
    FineTuningStore,
    FineTuningWorker,
    JobStore,
    OfflineStore,
    RedisJobStore,
)
from service.runtime import Services, fine_tuning_enabled

__all__ = ["JobsRuntime", "answer_line"]

logger = logging.getLogger(__name__)


async def answer_line(
    services: Services, endpoint: str, body: dict[str, Any], *, priority: int
) -> tuple[int, dict[str, Any]]:
    """One batch line: (status, body) as ``POST endpoint`` with ``body`` would answer, its engine
    requests at ``priority``."""
    try:
        prepared: Prepared
        if endpoint == "/v1/chat/completions":
            prepared = prepare_chat(ChatCompletionRequest.model_validate(body), services)
        else:
            prepared = prepare_completion(CompletionRequest.model_validate(body), services)
        if prepared.stream:
            raise InvalidRequestError("stream is not supported in a batch.", param="stream")
        with scheduling_priority(priority):
            payload, _cache = await answer_body(services, prepared)
        return 200, payload
    except ValidationError as exc:
        return 400, validation_error_body(exc.errors())
    except PowerserveError as exc:
        status = status_of(exc)
        return status, error_body(status, exc.message, param=exc.param, code=exc.code)
    except Exception:
        logger.exception("a batch line failed unexpectedly")
        return 500, error_body(500, "The server had an internal error.", code="internal_error")


class JobsRuntime:
    """The stores (files need no engine) and, once ``start`` is given the services, the workers.
    Files and batches are on this gateway's disk, or in the Redis replicas share
    (``jobs_redis_url``); fine-tuning jobs are always this gateway's: their adapters are loaded
    into its own engine."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.local = JobStore(settings.resolved_state_dir)
        self.store: OfflineStore = self.local
        if settings.jobs_redis_url:
            self.store = RedisJobStore(
                settings.jobs_redis_url, claim_timeout_s=settings.batch_claim_timeout_s
            )
        self.tuning_store = FineTuningStore(self.local)
        self.worker: BatchWorker | None = None
        self.tuning: FineTuningWorker | None = None

    async def open(self) -> None:
        """Check, before serving, that a shared store can keep what it is given."""
        if isinstance(self.store, RedisJobStore):
            await self.store.check()

    async def start(self, services: Services) -> None:
        """Serve the models of earlier fine-tuning jobs again, then resume the work left."""
        settings = self.settings
        if fine_tuning_enabled(settings) and services.engine.adds_adapters:
            self.tuning = FineTuningWorker(
                self.store,
                self.tuning_store,
                services,
                priority=settings.batch_priority,
                concurrency=settings.batch_concurrency,
            )
            await self.tuning.restore()
            self.tuning.start()

        async def answer(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            return await answer_line(services, endpoint, body, priority=settings.batch_priority)

        self.worker = BatchWorker(
            self.store,
            answer,
            concurrency=settings.batch_concurrency,
            busy_concurrency=settings.batch_busy_concurrency,
            interactive_busy=lambda: services.completions.interactive_busy(settings.batch_yield_s),
        )
        self.worker.start()

    def wake(self) -> None:
        for worker in (self.worker, self.tuning):
            if worker is not None:
                worker.wake()

    async def close(self) -> None:
        for worker in (self.worker, self.tuning):
            if worker is not None:
                await worker.close()
        if self.store is not self.local:
            await self.store.close()
        await self.local.close()
