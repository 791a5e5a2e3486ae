"""The FastAPI application: built by ``create_app``, the gateway started in its lifespan.

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
from service.api.observe import RequestIds, RequestMetrics
from service.api.routes import api_router
from service.config import Settings
from service.serving import Gateway

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

# A file upload's multipart body may be this much larger than the file (its form fields).
UPLOAD_OVERHEAD_BYTES = 1 << 20


async def _start(gateway: Gateway) -> None:
    try:
        await gateway.start()
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("the engine failed to start; shutting down")
        os.kill(os.getpid(), signal.SIGTERM)
        return
    settings = gateway.settings
    routes = [card.id for card in gateway.models.list(gateway.operator).data]
    logger.info("serving %s on http://%s:%d/v1", routes, settings.host, settings.port)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    gateway: Gateway = app.state.gateway
    await gateway.open()
    starting = asyncio.create_task(_start(gateway))
    try:
        yield
    finally:
        starting.cancel()
        await gateway.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="powerserve",
        version=__version__,
        description="OpenAI-compatible inference with power sampling and a power-self-distilled model.",
        lifespan=_lifespan,
    )
    settings = settings or Settings()
    # Everything the routes serve (service/serving), and the drain state SIGTERM starts.
    app.state.gateway = gateway = Gateway(settings)
    app.state.drain = drain = Drain(settings.drain_timeout_s)
    keys = gateway.gate.keys
    if keys.enabled:
        logger.info("API keys required on /v1 (%d configured)", len(keys))
    install_error_handlers(app)
    # Outermost last: ids, then metrics see every answer, then shutdown, keys, the body cap
    # (api/guards.py).
    uploads = {"/v1/files": settings.files_max_bytes + UPLOAD_OVERHEAD_BYTES}
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, uploads=uploads)
    app.add_middleware(KeyCheck, keys=keys, metrics_require_key=settings.metrics_require_key)
    app.add_middleware(Draining, drain=drain)
    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestIds)
    app.include_router(api_router)
    return app
