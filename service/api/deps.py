"""Dependencies of the routes: the services, once the engine is up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import EngineUnavailableError
from service.runtime import Services

__all__ = ["Services", "ServicesDep", "get_services"]


def get_services(request: Request) -> Services:
    services: Services | None = request.app.state.services
    if services is None:
        raise EngineUnavailableError("The service is starting; try again shortly.", retry_after=5)
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
