"""Prometheus metrics of the service: every metric is declared in ``registry.py``."""

from service.metrics.registry import (
    CACHE_ERRORS,
    CACHE_LOOKUPS,
    ENGINE_REQUESTS,
    POWER_ACCEPTANCE_RATE,
    POWER_COST_MULTIPLIER,
    REGISTRY,
    REQUEST_LATENCY,
    REQUESTS,
    REQUESTS_IN_FLIGHT,
    SELF_REWARD,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    render_latest,
)

__all__ = [
    "CACHE_ERRORS",
    "CACHE_LOOKUPS",
    "ENGINE_REQUESTS",
    "POWER_ACCEPTANCE_RATE",
    "POWER_COST_MULTIPLIER",
    "REGISTRY",
    "REQUESTS",
    "REQUESTS_IN_FLIGHT",
    "REQUEST_LATENCY",
    "SELF_REWARD",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS",
    "render_latest",
]
