"""Engines: the contract every route uses (base) and its vLLM implementations."""

from service.engines.base import (
    Constraint,
    Engine,
    EngineInfo,
    Generated,
    SamplingOptions,
    derive_seed,
    new_request_id,
)
from service.engines.local import LocalEngine

__all__ = [
    "Constraint",
    "Engine",
    "EngineInfo",
    "Generated",
    "LocalEngine",
    "SamplingOptions",
    "derive_seed",
    "new_request_id",
]
