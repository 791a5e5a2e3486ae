"""The neutral request and result of one generation, between the API and the router.

The API turns OpenAI requests into a ``GenerationRequest``; the router serves it on a route and
returns a ``GenerationResult`` (or streams ``ChoiceDelta`` items and the result last). Neither side
knows how the other works: no HTTP here, no MCMC in the API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "CacheControl",
    "Choice",
    "ChoiceDelta",
    "GenerationRequest",
    "GenerationResult",
    "self_reward",
]


@dataclass(frozen=True, kw_only=True)
class CacheControl:
    """A request's say on the response cache (LiteLLM's keys). ``explicit`` when the request sent
    any: then it is served from and stored in the cache even if not reproducible."""

    explicit: bool = False
    no_cache: bool = False  # do not answer from the cache
    no_store: bool = False  # do not store this answer
    ttl: float | None = None  # store for this many seconds
    s_maxage: float | None = None  # accept only a cached answer at most this old


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    # One or more token-id prompts; each gets n choices, numbered prompt * n + sample.
    prompts: tuple[tuple[int, ...], ...]
    n: int = 1
    # None: the route's default (plain: the rest of the context, capped; power: power_max_tokens).
    max_tokens: int | None = None
    # None: the route's default. On the power route this is the sequence-level temperature 1/alpha.
    temperature: float | None = None
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # None: no log-probs in the response; k >= 0: each token's, with k alternatives.
    logprobs: int | None = None
    # Power-route overrides (OpenAI SDK extra_body); other routes reject them when set.
    power_alpha: float | None = None
    mcmc_steps: int | None = None
    block_size: int | None = None
    power_stream_lag: int | None = None
    # Name of the request field that held the prompt, for error messages ("prompt" or "messages").
    prompt_param: str = "prompt"
    cache: CacheControl = field(default_factory=CacheControl)

    def output_fields(self) -> dict[str, Any]:
        """Everything that changes the answer: what a cache key must cover."""
        # Shallow: the values are immutable (tuples), and a deep asdict() of long prompts is slow.
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("cache", "prompt_param")
        }


def self_reward(logprobs: list[float]) -> dict[str, float]:
    """The answer's log-likelihood under the base model: what power sampling raises."""
    total = float(sum(logprobs))
    return {"sum_logprob": total, "mean_logprob": total / len(logprobs) if logprobs else 0.0}


@dataclass(kw_only=True)
class Choice:
    index: int
    text: str
    token_ids: list[int]
    # Raw log p of each returned token under the model that sampled it.
    logprobs: list[float]
    # Per token, {token id: raw log p} alternatives; None unless the request asked for log-probs.
    top_logprobs: list[dict[int, float]] | None
    finish_reason: str
    # Raw log p of each token under the base model, where the sampling model differs (an adapter).
    base_logprobs: list[float] | None = None
    # Route-specific report of this choice (the power route's chain statistics), JSON-ready.
    report: dict[str, Any] | None = None

    @property
    def self_reward(self) -> dict[str, float]:
        return self_reward(self.logprobs if self.base_logprobs is None else self.base_logprobs)


@dataclass(kw_only=True)
class ChoiceDelta:
    """A streamed increment of one choice."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None


@dataclass(kw_only=True)
class GenerationResult:
    model: str
    prompt_tokens: int
    choices: list[Choice]
    # Route-specific report of the whole request (summed over choices), JSON-ready, or None.
    report: dict[str, Any] | None = None
    # How the response cache served it: "hit", "miss" (computed, then stored) or "bypass".
    cache: str = "bypass"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy (top log-prob maps become [token, logprob] pairs: JSON keys are text)."""
        data = asdict(self)
        for choice in data["choices"]:
            if choice["top_logprobs"] is not None:
                choice["top_logprobs"] = [list(top.items()) for top in choice["top_logprobs"]]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationResult:
        choices = []
        for raw in data["choices"]:
            top = raw["top_logprobs"]
            choices.append(
                Choice(
                    **raw | {"top_logprobs": None if top is None else [dict(map(tuple, t)) for t in top]}
                )
            )
        return cls(**data | {"choices": choices})

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.token_ids) for choice in self.choices)

    @property
    def self_reward(self) -> dict[str, float]:
        """Summed log p per answer (averaged over choices) and per token (over all tokens)."""
        rewards = [c.self_reward for c in self.choices]
        tokens = sum(len(c.token_ids) for c in self.choices)
        per_token = sum(r["sum_logprob"] for r in rewards) / tokens if tokens else 0.0
        per_answer = sum(r["sum_logprob"] for r in rewards) / max(len(rewards), 1)
        return {"sum_logprob": per_answer, "mean_logprob": per_token}
