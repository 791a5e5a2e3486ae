"""Dependencies of the routes: the services, once the engine is up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.engines.base import Engine
from service.errors import EngineUnavailableError
from service.prompts import PromptRenderer
from service.router import Router

__all__ = ["Services", "ServicesDep", "get_services"]


@dataclass
class Services:
    settings: Settings
    engine: Engine
    renderer: PromptRenderer
    router: Router


def get_services(request: Request) -> Services:
    services: Services | None = request.app.state.services
    if services is None:
        raise EngineUnavailableError("The service is starting; try again shortly.", retry_after=5)
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
