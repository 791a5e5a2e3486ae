"""Dependencies of the routes: the services, once the engine is up; the files-and-batches runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from service.errors import EngineUnavailableError
from service.runtime import Services

if TYPE_CHECKING:  # service.api.jobs imports the endpoints, which import this module
    from service.api.jobs import JobsRuntime

__all__ = ["Services", "ServicesDep", "get_services", "jobs_of", "list_page"]


def get_services(request: Request) -> Services:
    services: Services | None = request.app.state.services
    if services is None:
        raise EngineUnavailableError("The service is starting; try again shortly.", retry_after=5)
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def jobs_of(request: Request) -> JobsRuntime:
    """The app's files-and-batches runtime (set up in the app's lifespan)."""
    jobs: JobsRuntime = request.app.state.jobs
    return jobs


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """One page of an OpenAI list endpoint (files, batches, fine-tuning jobs)."""
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
