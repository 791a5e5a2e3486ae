"""What a power sampler yields: tokens that are final early, and the answer last."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.power.report import SamplerStats

__all__ = ["FinalTokens", "PowerSample"]


@dataclass
class FinalTokens:
    """Tokens that no later step can change: safe to stream now."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[dict[int, float]]


@dataclass
class PowerSample:
    """One answer drawn from p(y | x) ** alpha (or as near as the sampler's settings get)."""

    token_ids: list[int]
    # Raw log p(y_t | x, y_<t) under the base model: the answer's self-reward is their sum.
    logprobs: list[float]
    top_logprobs: list[dict[int, float]]
    finish_reason: str  # "stop" (ended by EOS or a stop string) or "length" (cut by max_tokens)
    stats: SamplerStats = field(default_factory=SamplerStats)
