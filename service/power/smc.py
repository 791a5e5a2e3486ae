"""Power sampling by sequential Monte Carlo (Power-SMC): answers at near plain-decoding latency.

Reference: Azizi et al., "Power-SMC: sampling from power distributions of language models with
sequential Monte Carlo", arXiv 2602.10273 (the algorithm followed here).

Target: pi_alpha(y | x) ∝ p(y | x) ** alpha, as for the MH sampler (mh.py). Proposal q: the base model
at temperature 1/alpha, token by token: the proposal that minimises the variance of each token's
weight update. A partial answer's importance weight is prod_t p(y_t) ** alpha / q(y_t) = prod_t Z_t,
so the incremental log-weight of a token is its log normaliser zeta_t (normaliser.py), the same
quantity the MH ratio is made of.

With N particles, all log-weights w_i = 0, and blocks b = 1..K of B tokens (horizon H_b):

  1. Grow.      Every particle that has not ended draws up to B tokens from q (to EOS, a stop string
                or H_b); w_i += the sum of their zeta_t. EOS is absorbing: an ended particle keeps its
                weight and costs nothing more.
  2. Resample.  If the effective sample size ESS = (sum e^w)^2 / sum e^2w falls below kappa * N
                (and more blocks follow), draw N ancestors by systematic resampling with chance
                ∝ e^w and reset the weights to equal. A copy continues from its ancestor's prefix,
                which the engine's prefix cache already holds.
  3. Stream.    The answer will be one of the particles, and every particle descends from the ones
                alive now, so the prefix all of them share is final: it is yielded as it grows.

The answer is one final particle, drawn with chance ∝ e^w.

Exactness: the answer's law tends to pi_alpha as N grows (its bias falls like 1/N); at N = 1 it is
plain sampling at temperature 1/alpha. tests/power/test_smc.py measures the law on an enumerable
model against a pure-Python Power-SMC over the model's exact conditionals.

All particles only ever await the engine, so every particle of every request decodes in one engine
batch; each request's particles share one affinity, so a remote engine keeps them on one worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import numpy as np

from service.engines.base import Engine
from service.power.config import PowerConfig
from service.power.proposal import StopAt, Trajectory, propose
from service.power.report import SamplerStats
from service.power.sample import FinalTokens, PowerSample

__all__ = ["PowerSMCSampler", "effective_sample_size", "systematic_resample"]


def effective_sample_size(log_weights: np.ndarray) -> float:
    w = np.exp(log_weights - log_weights.max())
    return float(w.sum() ** 2 / (w**2).sum())


def systematic_resample(log_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N ancestor indices, each drawn with chance ∝ exp(log weight), from one uniform offset:
    lower variance than N independent draws (Douc & Cappé 2005)."""
    n = len(log_weights)
    w = np.exp(log_weights - log_weights.max())
    edges = np.cumsum(w / w.sum())
    edges[-1] = 1.0  # no index past the end from rounding
    points = (rng.random() + np.arange(n)) / n
    return np.searchsorted(edges, points, side="right")


class PowerSMCSampler:
    """Draws answers from p(y | x) ** alpha through any ``Engine``, one particle system per answer."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def run(
        self,
        prompt_ids: Sequence[int],
        config: PowerConfig,
        *,
        run_id: int = 0,
        stop_at: StopAt | None = None,
    ) -> AsyncIterator[FinalTokens | PowerSample]:
        # numpy takes unsigned seed words; OpenAI seeds may be any 64-bit integer, negative too.
        rng = np.random.default_rng(None if config.seed is None else [config.seed % 2**64, run_id, 1])
        affinity = uuid.uuid4().hex
        stats = SamplerStats(method="smc")
        n = config.particles
        particles = [Trajectory() for _ in range(n)]
        log_weights = np.zeros(n)
        streamed = 0

        for block in range(1, config.num_blocks + 1):
            horizon = config.horizon(block)

            # 1. Grow every particle that has not ended, all at once, and reweight.
            growing = [i for i, p in enumerate(particles) if not p.ended and len(p) < horizon]
            grown = await asyncio.gather(
                *(
                    propose(
                        self.engine,
                        prompt_ids,
                        particles[i],
                        horizon,
                        config,
                        seed=(run_id, block, i, "smc"),
                        affinity=affinity,
                        stop_at=stop_at,
                    )
                    for i in growing
                )
            )
            for i, growth in zip(growing, grown, strict=True):
                particles[i] = particles[i].extended(growth)
                log_weights[i] += sum(growth.zetas)
                stats.tokens_generated += len(growth)
            if all(p.ended for p in particles):
                break  # nothing left to grow: later blocks change nothing
            if block == config.num_blocks:
                break

            # 2. Resample when the weights have degenerated.
            ess = effective_sample_size(log_weights)
            if ess < config.resample_threshold * n:
                stats.resamples += 1
                stats.min_ess = ess if stats.min_ess is None else min(stats.min_ess, ess)
                ancestors = systematic_resample(log_weights, rng)
                particles = [particles[a] for a in ancestors]
                log_weights = np.zeros(n)

            # 3. Stream the prefix every particle shares: no later step can change it.
            shared = _common_prefix_length(particles)
            if shared > streamed:
                first = particles[0]
                yield FinalTokens(
                    first.token_ids[streamed:shared],
                    first.logprobs[streamed:shared],
                    first.top_logprobs[streamed:shared],
                )
                streamed = shared

        w = np.exp(log_weights - log_weights.max())
        answer = particles[int(rng.choice(n, p=w / w.sum()))]
        stats.normaliser_error_bound = sum(answer.zeta_bounds)
        if stats.min_ess is None:
            stats.min_ess = effective_sample_size(log_weights)
        yield PowerSample(
            token_ids=answer.token_ids,
            logprobs=answer.logprobs,
            top_logprobs=answer.top_logprobs,
            finish_reason="stop" if answer.ended else "length",
            stats=stats,
        )


def _common_prefix_length(particles: Sequence[Trajectory]) -> int:
    first = particles[0].token_ids
    length = min(len(p) for p in particles)
    for p in particles[1:]:
        ids = p.token_ids
        length = next((t for t in range(length) if ids[t] != first[t]), length)
    return length
