"""Prometheus metrics of the service: ``registry.py`` declares them, ``workers.py`` the workers'."""

from service.metrics.registry import (
    ANSWER_NLL,
    CACHE_ERRORS,
    CACHE_LOOKUPS,
    ENGINE_REQUESTS,
    POWER_ACCEPTANCE_RATE,
    POWER_COST_MULTIPLIER,
    REGISTRY,
    REQUEST_LATENCY,
    REQUESTS,
    REQUESTS_IN_FLIGHT,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    prime,
    render_latest,
)
from service.metrics.workers import register_worker_pool

__all__ = [
    "ANSWER_NLL",
    "CACHE_ERRORS",
    "CACHE_LOOKUPS",
    "ENGINE_REQUESTS",
    "POWER_ACCEPTANCE_RATE",
    "POWER_COST_MULTIPLIER",
    "REGISTRY",
    "REQUESTS",
    "REQUESTS_IN_FLIGHT",
    "REQUEST_LATENCY",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS",
    "prime",
    "register_worker_pool",
    "render_latest",
]
