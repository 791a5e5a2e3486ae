"""The served models: which route a requested model id names.

A served model ``<name>`` has up to three routes:

    <name>            plain sampling from the base model
    <name>-power      power sampling: answers from p(y | x) ** alpha (service.power)
    <name>-distilled  the power-self-distilled model: a LoRA adapter, sampled plainly
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from service.errors import ModelNotFoundError

__all__ = ["ModelRoute", "RouteKind", "find_route", "model_routes"]


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


def model_routes(base_model: str, *, distilled: bool) -> tuple[ModelRoute, ...]:
    """The routes of one base model; the distilled one only when an adapter is configured."""
    kinds = [RouteKind.PLAIN, RouteKind.POWER] + ([RouteKind.DISTILLED] if distilled else [])
    return tuple(ModelRoute(base_model + _SUFFIXES[kind], kind, base_model) for kind in kinds)


def find_route(model: str, routes: Sequence[ModelRoute]) -> ModelRoute:
    for route in routes:
        if route.model_id == model:
            return route
    raise ModelNotFoundError(model)
