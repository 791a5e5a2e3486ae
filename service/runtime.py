"""Assembling the service from its settings: model, engine, tokenizer, cache and request path.

The HTTP app (service/api/app.py) and the offline pipelines (service/distill) build the same parts
the same way, from here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service import metrics
from service.cache import MemoryStore, RedisStore, ResponseStore
from service.config import Settings
from service.engines.base import DISTILLED_ADAPTER, LORA_TARGET_MODULES, Engine
from service.engines.local import LocalEngine, adapter_lora_settings, platform_arguments
from service.engines.remote import RemoteEngine
from service.generation import GenerationRequest, GenerationResult
from service.model_store import (
    DEFAULT_ADAPTER_DIR,
    ensure_default_model,
    is_default_model,
    model_revision,
    position_limit,
)
from service.pipeline import CompletionService, ResultCache
from service.prompts import PromptRenderer

__all__ = [
    "Services",
    "build_engine",
    "build_store",
    "engine_adapters",
    "engine_arguments",
    "fine_tuning_enabled",
    "resolve_adapter",
    "resolve_model_dir",
    "running_services",
    "start_services",
]

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """The engine and the request path, without HTTP (the serving layer and offline work use it)."""

    settings: Settings
    engine: Engine
    renderer: PromptRenderer
    completions: CompletionService
    model_dir: Path  # the base model's directory (fine-tuning trains on it)

    @property
    def base_model(self) -> str:
        return self.engine.info.model_id

    async def generate(self, model_id: str, request: GenerationRequest) -> GenerationResult:
        """One request on the request path, unmetered (offline work of ``powerserve distill``)."""
        completions = self.completions
        return await completions.generate(completions.resolve(completions.route(model_id), request))


def resolve_model_dir(settings: Settings) -> Path:
    return settings.model if settings.model is not None else ensure_default_model(settings.cache_dir)


def resolve_adapter(settings: Settings) -> Path | None:
    """The distilled adapter: as configured, else the one shipped for the embedded default model,
    whether it is served by default or named by its path (as deployments name it to workers)."""
    if settings.distilled_adapter is not None:
        return settings.distilled_adapter
    default = settings.model is None or is_default_model(settings.model)
    if default and (DEFAULT_ADAPTER_DIR / "adapter_config.json").exists():
        return DEFAULT_ADAPTER_DIR
    return None


def engine_adapters(settings: Settings) -> dict[str, Path]:
    """The LoRA adapters the engine serves, by name: the distilled one, if any."""
    adapter = resolve_adapter(settings)
    return {} if adapter is None else {DISTILLED_ADAPTER: adapter}


def engine_arguments(settings: Settings, model_dir: Path) -> dict[str, Any]:
    """vLLM's engine arguments (``EngineArgs`` fields) for these settings. The in-process engine
    takes them as they are and ``powerserve worker`` as ``vllm serve`` flags, so both serve alike."""
    limit = position_limit(model_dir)
    context = settings.context_length(limit)
    if settings.max_model_len is None and limit is not None:
        logger.info("context length %d: the model's own limit (max_position_embeddings)", context)
    arguments: dict[str, Any] = dict(
        model=str(model_dir),
        served_model_name=settings.served_model_name,
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=context,
        max_num_seqs=settings.max_num_seqs,
        max_logprobs=max(20, settings.power_top_logprobs),
        enable_prefix_caching=True,
        # vLLM's own Prometheus metrics (tokens per step, prefix-cache hits, queue) are served
        # beside ours on /metrics; nothing is logged unless asked.
        disable_log_stats=False,
        # Requests carry a priority (batch lines yield to interactive ones: service/jobs).
        scheduling_policy="priority",
        # Structured outputs (response_format, required tools) by xgrammar, JSON without free
        # whitespace: a small model let loose between tokens may emit whitespace until max_tokens.
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
    )
    arguments.update(platform_arguments(context))
    if settings.kv_block_size is not None:
        arguments["block_size"] = settings.kv_block_size
    adapters = engine_adapters(settings)
    if fine_tuning_enabled(settings):
        # Room for the adapters fine-tuning jobs add while the engine runs (service/jobs/tuning.py).
        arguments.update(
            enable_lora=True,
            max_loras=settings.max_loras,
            **adapter_lora_settings(
                list(adapters.values()),
                min_rank=settings.fine_tuning_max_rank,
                modules=LORA_TARGET_MODULES,
            ),
        )
    elif adapters:
        arguments.update(
            enable_lora=True,
            max_loras=len(adapters),
            **adapter_lora_settings(list(adapters.values())),
        )
    return arguments


def fine_tuning_enabled(settings: Settings) -> bool:
    """Whether fine-tuning jobs run here (and the engine starts able to load their adapters): an
    in-process engine with LoRA asked for or on anyway; with workers only when asked for, since the
    workers must be started with fine-tuning on too and read the gateway's state directory at the
    same path (the job's adapter is loaded into each of them from there)."""
    if settings.workers:
        return settings.fine_tuning is True
    if settings.fine_tuning is None:
        return bool(engine_adapters(settings))
    return settings.fine_tuning


def build_engine(settings: Settings, model_dir: Path) -> Engine:
    adapters = engine_adapters(settings)
    if settings.workers:
        # The workers load the adapter themselves (powerserve worker serves it as `distilled`).
        remote = RemoteEngine(
            settings.worker_urls(),
            model_dir=model_dir,
            model_id=settings.served_model_name,
            adapters=tuple(adapters),
            adds_adapters=fine_tuning_enabled(settings),
            **settings.worker_pool_options(),
        )
        metrics.register_worker_pool(remote.worker_snapshot)
        return remote
    return LocalEngine(
        engine_arguments(settings, model_dir),
        model_id=settings.served_model_name,
        adapters=adapters,
        kv_cache_gib=settings.kv_cache_gib,
    )


def build_store(settings: Settings) -> ResponseStore:
    if settings.redis_url:
        return RedisStore(settings.redis_url)
    return MemoryStore(settings.cache_max_entries)


async def start_services(
    settings: Settings, store: ResponseStore, *, on_engine: Callable[[Engine], None] | None = None
) -> Services:
    """Prepare the model, start the engine and wire the request path. ``on_engine`` sees the engine
    before it starts (the API shows it to /health while it loads)."""
    model_dir = await asyncio.to_thread(resolve_model_dir, settings)
    engine = build_engine(settings, model_dir)
    if on_engine is not None:
        on_engine(engine)
    renderer = await asyncio.to_thread(PromptRenderer, model_dir)
    adapter = resolve_adapter(settings)
    revision = await asyncio.to_thread(model_revision, model_dir, *([adapter] if adapter else []))
    try:
        await asyncio.wait_for(engine.start(), timeout=settings.engine_start_timeout_s)
    except BaseException:
        await engine.close()
        raise
    cache = ResultCache(store, revision=revision, default_ttl_s=settings.cache_ttl_s)
    completions = CompletionService(engine, renderer, settings, cache)
    metrics.prime([route.kind.value for route in completions.routes])
    metrics.watch_engine(engine.num_running_requests)
    return Services(settings, engine, renderer, completions, model_dir)


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    """The whole service without HTTP, for offline work; closed on exit."""
    store = build_store(settings)
    services = await start_services(settings, store)
    try:
        yield services
    finally:
        await services.engine.close()
        await store.close()
