"""The proposal both power samplers draw from: the base model at temperature 1/alpha.

A ``Trajectory`` is a partial answer with, per token, what the samplers' weights and acceptance
ratios need: the raw log p (the self-reward), the log normaliser zeta_t (normaliser.py) and its
error bound. ``propose`` extends one through the engine until EOS, a stop string or a horizon; EOS and
stops are absorbing: an ended trajectory never grows again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from service.engines.base import Engine, SamplingOptions, derive_seed
from service.power.config import PowerConfig
from service.power.normaliser import log_normaliser

__all__ = ["StopAt", "Trajectory", "normalisers", "proposal_options", "propose"]

# Given an answer's token ids, how many of them to keep: up to and including the token that completes
# its first stop string; None when it holds none. Stops are text, so the request path decodes.
StopAt = Callable[[Sequence[int]], int | None]


@dataclass
class Trajectory:
    """A (partial) answer and, per token, what the power target needs."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    zetas: list[float] = field(default_factory=list)
    zeta_bounds: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    ended: bool = False  # ended by EOS or a stop string: the answer is complete

    def __len__(self) -> int:
        return len(self.token_ids)

    def prefix(self, m: int) -> Trajectory:
        return Trajectory(
            self.token_ids[:m],
            self.logprobs[:m],
            self.zetas[:m],
            self.zeta_bounds[:m],
            self.top_logprobs[:m],
        )

    def extended(self, suffix: Trajectory) -> Trajectory:
        return Trajectory(
            self.token_ids + suffix.token_ids,
            self.logprobs + suffix.logprobs,
            self.zetas + suffix.zetas,
            self.zeta_bounds + suffix.zeta_bounds,
            self.top_logprobs + suffix.top_logprobs,
            suffix.ended,
        )


async def propose(
    engine: Engine,
    prompt_ids: Sequence[int],
    prefix: Trajectory,
    horizon: int,
    config: PowerConfig,
    *,
    seed: tuple[int | str, ...],
    affinity: str,
    stop_at: StopAt | None = None,
) -> Trajectory:
    """Draw a suffix from q after ``prompt + prefix``, until EOS, a stop or ``horizon`` tokens in all."""
    info = engine.info
    options = proposal_options(config, info.vocab_size, max_tokens=horizon - len(prefix), seed=seed)
    k = options.top_logprobs
    out = await engine.complete([*prompt_ids, *prefix.token_ids], options, affinity=affinity)
    token_ids, logprobs, top = out.token_ids, out.logprobs, out.top_logprobs
    ended = bool(token_ids) and token_ids[-1] in info.eos_token_ids
    if stop_at is not None and (keep := stop_at([*prefix.token_ids, *token_ids])) is not None:
        keep = max(keep - len(prefix), 1)
        token_ids, logprobs, top = token_ids[:keep], logprobs[:keep], top[:keep]
        ended = True
    zetas, bounds = normalisers(config, top, k, info.vocab_size)
    return Trajectory(token_ids, logprobs, zetas, bounds, top, ended)


def proposal_options(
    config: PowerConfig, vocab_size: int, *, max_tokens: int, seed: tuple[int | str, ...]
) -> SamplingOptions:
    """q as the engine samples it: temperature 1/alpha, no top-p, the raw top-k log-probs the
    normalisers need, a seed derived from the request's and ``seed`` (the draw's coordinates)."""
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=config.proposal_temperature,
        top_p=1.0,
        top_logprobs=min(config.top_logprobs, vocab_size),
        seed=None if config.seed is None else derive_seed(config.seed, *seed),
        # Stop strings need text; the engine's own check saves the tokens after a stop, ours
        # (stop_at) also sees a stop that straddles the prefix and what is drawn after it.
        stop=config.stop,
        detokenize=bool(config.stop),
        constraint=config.constraint,
    )


def normalisers(
    config: PowerConfig, top: Sequence[dict[int, float]], k: int, vocab_size: int
) -> tuple[list[float], list[float]]:
    """Per token, zeta_t and its error bound (normaliser.py) from its raw top-k log-probs; zeros in
    the alpha = inf limit, where acceptances compare log p alone."""
    if math.isinf(config.alpha):
        return [0.0] * len(top), [0.0] * len(top)
    pairs = [log_normaliser(config.alpha, alts, k, vocab_size) for alts in top]
    return [zeta for zeta, _ in pairs], [bound for _, bound in pairs]
