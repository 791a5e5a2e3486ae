"""The neutral request and result of one generation, between the API and the request path.

The API turns OpenAI requests into a ``GenerationRequest``; the request path (service.pipeline)
serves it on a route and returns a ``GenerationResult`` (or streams ``ChoiceDelta`` items, each whole
``Choice`` as it ends and the result last). Neither side knows how the other works: no HTTP here, no
MCMC in the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engines.base import Constraint
from service.power import PowerMethod, PowerReport, ResampleAt, Resampling, SamplerStats

__all__ = ["Choice", "ChoiceDelta", "GenerationRequest", "GenerationResult", "SelfReward"]


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """A request as the client sent it: None means "the route's default", resolved later."""

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
    power_method: PowerMethod | None = None
    power_particles: int | None = None
    power_alpha: float | None = None
    mcmc_steps: int | None = None
    block_size: int | None = None
    power_stream_lag: int | None = None
    # The most tokens generated per token returned the caller will pay (the route fits N or steps).
    power_budget: float | None = None
    # The seconds the caller will wait for an answer (the route fits N or steps to its estimates).
    power_latency_target: float | None = None
    # How SMC resamples (None: the operator's default).
    power_resampling: Resampling | None = None
    # Where SMC may resample (None: the operator's default).
    power_resample_at: ResampleAt | None = None
    # Structured outputs (response_format, or a tool call the request requires).
    constraint: Constraint | None = None
    # The request field the constraint came from, for error messages.
    constraint_param: str = "response_format"
    # (token id, bias) pairs, sorted by token id.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Name of the request field that held the prompt, for error messages ("prompt" or "messages").
    prompt_param: str = "prompt"

    @property
    def sizes_its_sampler(self) -> bool:
        """Whether the request sets the power sampler's size itself (particles or MH steps), which
        the route then never changes."""
        return self.power_particles is not None or self.mcmc_steps is not None


@dataclass(frozen=True)
class SelfReward:
    """An answer's log-likelihood under the base model: what power sampling raises."""

    sum_logprob: float
    mean_logprob: float

    @classmethod
    def of(cls, logprobs: list[float]) -> SelfReward:
        total = float(sum(logprobs))
        return cls(total, total / len(logprobs) if logprobs else 0.0)

    def to_json(self) -> dict[str, float]:
        return {"sum_logprob": self.sum_logprob, "mean_logprob": self.mean_logprob}


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
    # The power sampler's run behind this choice (power route only).
    sampler: SamplerStats | None = None

    @property
    def self_reward(self) -> SelfReward:
        return SelfReward.of(self.logprobs if self.base_logprobs is None else self.base_logprobs)


@dataclass(kw_only=True)
class ChoiceDelta:
    """A streamed increment of one choice."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] | None = None


@dataclass(kw_only=True)
class GenerationResult:
    model: str
    prompt_tokens: int
    choices: list[Choice]
    # The power route's report of the whole request (summed over choices).
    power: PowerReport | None = None
    # How the response cache served it: "hit", "miss" (computed, then stored) or "bypass".
    cache: str = "bypass"

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.token_ids) for choice in self.choices)

    @property
    def tokens_generated(self) -> int:
        """Everything the engine generated for this result (power: rejected proposals too)."""
        return self.power.tokens_generated if self.power is not None else self.completion_tokens

    @property
    def self_reward(self) -> SelfReward:
        """Summed log p per answer (averaged over choices) and per token (over all tokens)."""
        rewards = [c.self_reward for c in self.choices]
        total = sum(r.sum_logprob for r in rewards)
        tokens = self.completion_tokens
        return SelfReward(total / max(len(rewards), 1), total / tokens if tokens else 0.0)
