"""The FastAPI application: built by ``create_app``, with the engine started in its lifespan.

The server listens at once and answers /health with 503 while the engine loads (tens of seconds),
then 200; requests meanwhile get 503 with Retry-After. If the engine cannot start, the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from service import __version__
from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.observe import RequestMetrics
from service.api.routes import api_router
from service.cache import MemoryStore, RedisStore, ResponseStore
from service.config import Settings
from service.engines.base import Engine
from service.engines.local import LocalEngine
from service.model_store import ensure_default_model, model_revision
from service.prompts import PromptRenderer
from service.router import DISTILLED_ADAPTER, Router

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


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


async def _start_services(app: FastAPI, settings: Settings) -> None:
    try:
        model_dir = await asyncio.to_thread(resolve_model_dir, settings)
        engine = build_engine(settings, model_dir)
        app.state.engine = engine
        renderer = await asyncio.to_thread(PromptRenderer, model_dir)
        adapters = [settings.distilled_adapter] if settings.distilled_adapter else []
        revision = await asyncio.to_thread(model_revision, model_dir, *adapters)
        await asyncio.wait_for(engine.start(), timeout=settings.engine_start_timeout_s)
        router = Router(engine, renderer, settings, store=app.state.store, revision=revision)
        app.state.services = Services(settings, engine, renderer, router)
        logger.info(
            "serving %s on http://%s:%d/v1",
            [r.model_id for r in app.state.services.router.routes],
            settings.host,
            settings.port,
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("the engine failed to start; shutting down")
        os.kill(os.getpid(), signal.SIGTERM)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.engine = None
    app.state.services = None
    app.state.store = build_store(app.state.settings)
    starting = asyncio.create_task(_start_services(app, app.state.settings))
    try:
        yield
    finally:
        starting.cancel()
        await app.state.store.close()
        if app.state.engine is not None:
            await app.state.engine.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="powerserve",
        version=__version__,
        description="OpenAI-compatible inference with power sampling and a power-self-distilled model.",
        lifespan=_lifespan,
    )
    app.state.settings = settings or Settings()
    install_error_handlers(app)
    app.add_middleware(RequestMetrics)
    app.include_router(api_router)
    return app
