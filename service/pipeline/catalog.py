"""The served models: which route a requested model id names.

A served model ``<name>`` has up to three routes:

    <name>            plain sampling from the base model
    <name>-power      power sampling: answers from p(y | x) ** alpha (service.power)
    <name>-distilled  the power-self-distilled model: a LoRA adapter, sampled plainly

and one more distilled route per fine-tuning job that succeeded (``ft:<name>:<suffix>:<job>``,
service/jobs/tuning.py): its own adapter, added while the service runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from service.engines.base import DISTILLED_ADAPTER
from service.errors import ModelNotFoundError

__all__ = ["ModelRoute", "RouteKind", "find_route", "fine_tuned_route", "model_routes"]


class RouteKind(StrEnum):
    PLAIN = "plain"
    POWER = "power"
    DISTILLED = "distilled"


_SUFFIXES = {RouteKind.PLAIN: "", RouteKind.POWER: "-power", RouteKind.DISTILLED: "-distilled"}


@dataclass(frozen=True)
class ModelRoute:
    """One served model id and how it samples."""

    model_id: str  # what clients put in `model`
    kind: RouteKind
    base_model: str
    adapter: str | None = None  # the LoRA adapter a distilled route samples from
    # A fine-tuned model belongs to the project whose job made it (None: made without keys); the
    # base model's routes are everyone's.
    owner: str | None = None
    shared: bool = True


def model_routes(base_model: str, *, distilled: bool) -> tuple[ModelRoute, ...]:
    """The routes of one base model; the distilled one only when an adapter is configured."""
    kinds = [RouteKind.PLAIN, RouteKind.POWER] + ([RouteKind.DISTILLED] if distilled else [])
    return tuple(
        ModelRoute(
            base_model + _SUFFIXES[kind],
            kind,
            base_model,
            adapter=DISTILLED_ADAPTER if kind is RouteKind.DISTILLED else None,
        )
        for kind in kinds
    )


def fine_tuned_route(model_id: str, base_model: str, *, owner: str | None = None) -> ModelRoute:
    """A fine-tuning job's model: a distilled route on the adapter the engine knows by its id, seen
    by its owner's project only."""
    return ModelRoute(
        model_id, RouteKind.DISTILLED, base_model, adapter=model_id, owner=owner, shared=False
    )


def find_route(model: str, routes: Sequence[ModelRoute]) -> ModelRoute:
    for route in routes:
        if route.model_id == model:
            return route
    raise ModelNotFoundError(model)
