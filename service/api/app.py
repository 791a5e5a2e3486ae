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

from fastapi import FastAPI

from service import __version__
from service.api.errors import install_error_handlers
from service.api.guards import BodyLimit, Drain, Draining, KeyCheck
from service.api.jobs import JobsRuntime
from service.api.observe import RequestMetrics
from service.api.routes import api_router
from service.config import Settings
from service.engines.base import Engine
from service.limits import Gate
from service.runtime import build_store, start_services

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

# File uploads (the files API) stream to disk under a cap of their own, not max-body-bytes.
UPLOAD_PATHS = ("/v1/files", "/v1/uploads")


async def _start_services(app: FastAPI, settings: Settings) -> None:
    def show_engine(engine: Engine) -> None:
        app.state.engine = engine

    try:
        services = await start_services(settings, app.state.store, on_engine=show_engine)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("the engine failed to start; shutting down")
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # Fine-tuned models are served again before any request; batches and jobs resume.
    await app.state.jobs.start(services)
    app.state.services = services
    routes = [route.model_id for route in services.completions.routes]
    logger.info("serving %s on http://%s:%d/v1", routes, settings.host, settings.port)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.engine = None
    app.state.services = None
    app.state.store = build_store(app.state.settings)
    app.state.jobs = JobsRuntime(app.state.settings)  # files, batches, fine-tuning jobs
    await app.state.jobs.open()
    starting = asyncio.create_task(_start_services(app, app.state.settings))
    try:
        yield
    finally:
        starting.cancel()
        await app.state.jobs.close()
        await app.state.gate.close()
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
    settings = app.state.settings = settings or Settings()
    # Keys, limits and admission control (service/limits); the drain state SIGTERM starts.
    app.state.gate = gate = Gate.from_settings(settings)
    app.state.drain = drain = Drain(settings.drain_timeout_s)
    if gate.keys.enabled:
        logger.info("API keys required on /v1 (%d configured)", len(gate.keys))
    install_error_handlers(app)
    # Outermost last: metrics see every answer, then shutdown, keys, the body cap (api/guards.py).
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=UPLOAD_PATHS)
    app.add_middleware(KeyCheck, keys=gate.keys, metrics_require_key=settings.metrics_require_key)
    app.add_middleware(Draining, drain=drain)
    app.add_middleware(RequestMetrics)
    app.include_router(api_router)
    return app
