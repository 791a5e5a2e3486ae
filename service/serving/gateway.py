"""The composition root: everything the HTTP app serves, built once from the settings.

    Gateway.open()    the gate, the response cache's store, the offline store; files and batches
                      answer from here on (they need no engine)
    Gateway.start()   the engine and the request path (runtime.start_services), then the serving
                      objects that need them, then the batch and fine-tuning workers; the engine
                      is warmed up (one short request of each kind) before the gateway is ready
    Gateway.close()   all of it, in reverse

Routes reach the serving objects through ``service.api.deps``; the workers call the same objects,
so a batch line and a fine-tuning job's teacher request take the path an HTTP request takes: the
gate (charged to the key that created the work), the cache, the pipeline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from service.config import Settings
from service.engines.base import Constraint, Engine, SamplingOptions, scheduling_priority
from service.errors import EngineUnavailableError, PowerserveError
from service.generation import GenerationRequest, GenerationResult
from service.jobs import (
    BatchRecord,
    BatchWorker,
    FineTuningJob,
    FineTuningWorker,
    OfflineStore,
    RedisOfflineStore,
    RetentionWorker,
    SqliteOfflineStore,
)
from service.limits import ApiKey, Gate
from service.prompts import PromptRenderer
from service.runtime import Services, build_store, fine_tuning_enabled, start_services
from service.serving.batches import BatchesServing
from service.serving.caller import Caller
from service.serving.completions import ChatServing, CompletionsServing, TextCompletionServing
from service.serving.files import FilesServing
from service.serving.fine_tuning import FineTuningServing
from service.serving.models import ModelsServing
from service.serving.responses import ResponsesServing
from service.serving.stored_responses import build_stored_responses
from service.serving.tokenize import TokenizeServing

__all__ = ["Gateway", "JobGenerator"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Offline work created without keys is charged (and rate-limited) under this identity.
_OFFLINE_IDENTITY = "offline"


@dataclass(frozen=True)
class JobGenerator:
    """A fine-tuning job's requests: through the completions serving object, as its owner, at the
    job's priority (distill.teacher.Generator)."""

    completions: CompletionsServing[Any]
    caller: Caller
    priority: int

    @property
    def renderer(self) -> PromptRenderer:
        return self.completions.renderer

    @property
    def base_model(self) -> str:
        return self.completions.models.base_model

    async def generate(self, model_id: str, request: GenerationRequest) -> GenerationResult:
        with scheduling_priority(self.priority):
            return await self.completions.generate(model_id, request, self.caller)


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.gate = Gate.from_settings(settings)
        self.response_store = build_store(settings)
        self.stored_responses = build_stored_responses(settings)
        # Files and batches on this gateway's disk, or in the Redis replicas share; fine-tuning
        # jobs are always this gateway's (their adapters are loaded into its own engine).
        self.local = SqliteOfflineStore(settings.resolved_state_dir)
        self.store: OfflineStore = self.local
        if settings.jobs_redis_url:
            self.store = RedisOfflineStore(
                settings.jobs_redis_url, claim_timeout_s=settings.batch_claim_timeout_s
            )
        self.files = FilesServing(self.store, settings)
        self.batches = BatchesServing(self.store, self.files, wake=self.wake)
        self.fine_tuning = FineTuningServing(self.local, self.files, settings, wake=self.wake)
        # Set while the engine starts (for /health), and once it serves.
        self.engine: Engine | None = None
        self.services: Services | None = None
        self._chat: ChatServing | None = None
        self._completions: TextCompletionServing | None = None
        self._models: ModelsServing | None = None
        self._responses: ResponsesServing | None = None
        self._tokenize: TokenizeServing | None = None
        self.batch_worker: BatchWorker | None = None
        self.tuning_worker: FineTuningWorker | None = None
        self.retention = RetentionWorker(self.store)

    # --- the serving objects that need the engine -------------------------------------------------

    @property
    def chat(self) -> ChatServing:
        return _started(self._chat)

    @property
    def completions(self) -> TextCompletionServing:
        return _started(self._completions)

    @property
    def models(self) -> ModelsServing:
        return _started(self._models)

    @property
    def responses(self) -> ResponsesServing:
        return _started(self._responses)

    @property
    def tokenize(self) -> TokenizeServing:
        return _started(self._tokenize)

    @property
    def ready(self) -> bool:
        return self._chat is not None

    @property
    def operator(self) -> Caller:
        """A caller that sees every project (the server's own log lines)."""
        return Caller("operator")

    # --- lifecycle ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Check, before serving, that the stores can keep what they are given."""
        await self.gate.check()
        if isinstance(self.store, RedisOfflineStore):
            await self.store.check()
        self.retention.start()

    async def start(self) -> None:
        """Start the engine and the request path, then the offline workers."""
        settings = self.settings

        def show_engine(engine: Engine) -> None:
            self.engine = engine

        services = await start_services(settings, self.response_store, on_engine=show_engine)
        models = ModelsServing(services.engine, services.completions)
        chat = ChatServing(services.completions, models, self.gate, settings)
        completions = TextCompletionServing(services.completions, models, self.gate, settings)
        self.batches.endpoints = {chat.endpoint: chat, completions.endpoint: completions}
        self.fine_tuning.models = models
        if fine_tuning_enabled(settings) and services.engine.adds_adapters:
            self.tuning_worker = FineTuningWorker(
                self.local,
                self.local,
                models,
                model_dir=services.model_dir,
                generator_for=lambda job: JobGenerator(chat, self.owner(job), settings.batch_priority),
                priority=settings.batch_priority,
                concurrency=settings.batch_concurrency,
            )
            self.fine_tuning.worker = self.tuning_worker
            # Fine-tuned models are served again before any request.
            await self.tuning_worker.restore()
            self.tuning_worker.start()
        self.batch_worker = BatchWorker(
            self.store,
            self._answer_line,
            concurrency=settings.batch_concurrency,
            busy_concurrency=settings.batch_busy_concurrency,
            interactive_busy=lambda: services.completions.interactive_busy(settings.batch_yield_s),
            output_retention_s=settings.files_retention_s,
        )
        self.batch_worker.start()
        await _warm_up(services.engine, chat.renderer, settings.power_top_logprobs)
        self.services, self._models = services, models
        self._chat, self._completions = chat, completions
        self._responses = ResponsesServing(chat, self.stored_responses)
        self._tokenize = TokenizeServing(chat.renderer, models)

    def wake(self) -> None:
        """New offline work, or a cancel: the workers look now."""
        for worker in (self.batch_worker, self.tuning_worker):
            if worker is not None:
                worker.wake()

    async def close(self) -> None:
        for worker in (self.batch_worker, self.tuning_worker, self.retention):
            if worker is not None:
                await worker.close()
        if self.store is not self.local:
            await self.store.close()
        await self.local.close()
        await self.gate.close()
        await self.response_store.close()
        await self.stored_responses.close()
        if self.engine is not None:
            await self.engine.close()

    # --- offline work ---------------------------------------------------------------------------------

    def owner(self, work: BatchRecord | FineTuningJob) -> Caller:
        """Whom offline work is charged to: the key that created it (its limits as the keys file
        says now; a key removed since keeps the settings' limits), or one shared identity when it
        was created without keys."""
        if work.key_name is None:
            return Caller(_OFFLINE_IDENTITY)
        key = self.gate.keys.named(work.key_name)
        return Caller.with_key(key or ApiKey(work.key_name, project_name=work.project))

    async def _answer_line(self, batch: BatchRecord, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        serving = self.batches.endpoints[batch.endpoint]
        return await serving.answer_line(body, self.owner(batch), priority=self.settings.batch_priority)


async def _warm_up(engine: Engine, renderer: PromptRenderer, top_logprobs: int) -> None:
    """One short generation of each kind the routes make, before the gateway reports ready: an
    engine's first steps of a kind are slow (the first chat after start took 20.9 s, the next
    0.55 s), and the first user should not pay for them. A kind the model cannot do (JSON on a
    model of four tokens) is logged and skipped: its requests will say why."""
    began = time.monotonic()
    prompt = renderer.encode_text("Hello")
    kinds = {
        "plain and power": SamplingOptions(max_tokens=2, top_logprobs=top_logprobs),
        "structured": SamplingOptions(max_tokens=2, constraint=Constraint("json_object")),
        **{name: SamplingOptions(max_tokens=2, adapter=name) for name in engine.info.adapters},
    }
    for kind, options in kinds.items():
        try:
            await engine.complete(prompt, options)
        except PowerserveError as exc:
            logger.warning("warming up %s requests failed: %s", kind, exc)
    await engine.score(prompt, 1)  # the distilled route's rescoring pass
    logger.info("engine warmed up in %.1f s (%s)", time.monotonic() - began, ", ".join(kinds))


def _started(serving: T | None) -> T:
    if serving is None:
        raise EngineUnavailableError("The service is starting; try again shortly.", retry_after=5)
    return serving
