"""Assembling the service from its settings: model, engine, tokenizer, cache and router.

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

from service.cache import MemoryStore, RedisStore, ResponseStore
from service.config import Settings
from service.engines.base import Engine
from service.engines.local import LocalEngine
from service.model_store import ensure_default_model, model_revision
from service.prompts import PromptRenderer
from service.router import DISTILLED_ADAPTER, Router

__all__ = [
    "Services",
    "build_engine",
    "build_store",
    "resolve_model_dir",
    "running_services",
    "start_services",
]

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    renderer: PromptRenderer
    router: Router


def resolve_model_dir(settings: Settings) -> Path:
    return settings.model if settings.model is not None else ensure_default_model(settings.cache_dir)


def build_engine(settings: Settings, model_dir: Path) -> Engine:
    adapters = {}
    if settings.distilled_adapter is not None:
        adapters[DISTILLED_ADAPTER] = settings.distilled_adapter
    return LocalEngine(
        model_dir,
        model_id=settings.served_model_name,
        max_model_len=settings.max_model_len,
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        kv_cache_gib=settings.kv_cache_gib,
        max_num_seqs=settings.max_num_seqs,
        kv_block_size=settings.kv_block_size,
        max_logprobs=max(20, settings.power_top_logprobs),
        adapters=adapters,
    )


def build_store(settings: Settings) -> ResponseStore:
    if settings.redis_url:
        return RedisStore(settings.redis_url)
    return MemoryStore(settings.cache_max_entries)


async def start_services(
    settings: Settings, store: ResponseStore, *, on_engine: Callable[[Engine], None] | None = None
) -> Services:
    """Prepare the model, start the engine and wire the router. ``on_engine`` sees the engine before
    it starts (the API shows it to /health while it loads)."""
    model_dir = await asyncio.to_thread(resolve_model_dir, settings)
    engine = build_engine(settings, model_dir)
    if on_engine is not None:
        on_engine(engine)
    renderer = await asyncio.to_thread(PromptRenderer, model_dir)
    adapters = [settings.distilled_adapter] if settings.distilled_adapter else []
    revision = await asyncio.to_thread(model_revision, model_dir, *adapters)
    try:
        await asyncio.wait_for(engine.start(), timeout=settings.engine_start_timeout_s)
    except BaseException:
        await engine.close()
        raise
    return Services(
        settings, engine, renderer, Router(engine, renderer, settings, store=store, revision=revision)
    )


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
