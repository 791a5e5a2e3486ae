"""Power sampling under a constraint: answers from p(y | x) ** alpha restricted to the answers a
grammar accepts (a JSON schema, a regex, a choice, a forced tool call).

Target: pi(y) ∝ p(y | x) ** alpha * [y is accepted]. Proposal: the engine's constrained decoding at
temperature 1/alpha, which masks the tokens that cannot continue a match before it samples:

    q(v | y_<t) = p(v) ** alpha / Z~_t  over the allowed v,   Z~_t = sum_{v allowed} p(v) ** alpha,

so an answer's importance weight is pi(y) / q(y) ∝ prod_t Z~_t, with the *unmasked* p. The engine
does not return it: the mask is applied before its sampler, so even the raw log-probs of a
constrained request are p~ = p / m_t, renormalised over the allowed tokens (m_t: their mass). A
sampler that used the normaliser of p~ alone would target prod_t p~(y_t) ** alpha, the locally
renormalised law that grammar-constrained decoding is known to distort towards. Since p(y_t) and
p~(y_t) differ by m_t, one scoring pass of the answer under the base model (its unmasked log p)
recovers it:

    log Z~_t = alpha * (log p(y_t) - log p~(y_t)) + log sum_v p~(v) ** alpha,

the last term from the top-k log-probs as for unconstrained SMC (normaliser.py, with its bound).

The engine's grammar starts afresh with every request, so a particle cannot be continued from a
resampled prefix: this is Power-SMC with one block and no resampling (importance sampling with N
particles). Each particle is one constrained generation plus one prefill; the answer is drawn with
chance ∝ its weight. Its law tends to pi as N grows (bias ~ 1/N); at N = 1 it is constrained
sampling at temperature 1/alpha. Nothing is final before the end, so nothing streams early.
tests/power/test_constrained.py measures the law on the enumerable model under a regex.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import numpy as np

from service.engines.base import Engine
from service.power.config import PowerConfig
from service.power.normaliser import log_normaliser
from service.power.proposal import StopAt, Trajectory, proposal_options
from service.power.report import SamplerStats
from service.power.sample import FinalTokens, PowerSample
from service.power.smc import effective_sample_size

__all__ = ["ConstrainedPowerSampler"]


class ConstrainedPowerSampler:
    """Draws answers from p(y | x) ** alpha restricted to ``config.constraint``, through any
    ``Engine``."""

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
        assert config.constraint is not None, "the unconstrained target is smc.py's"
        rng = np.random.default_rng(None if config.seed is None else [config.seed % 2**64, run_id, 2])
        affinity = uuid.uuid4().hex
        particles = await asyncio.gather(
            *(
                self._particle(prompt_ids, config, (run_id, i), affinity, stop_at)
                for i in range(config.particles)
            )
        )
        log_weights = np.array([weight for _, weight in particles])
        w = np.exp(log_weights - log_weights.max())
        answer = particles[int(rng.choice(len(particles), p=w / w.sum()))][0]
        stats = SamplerStats(
            method="smc",
            tokens_generated=sum(len(p) for p, _ in particles),
            normaliser_error_bound=sum(answer.zeta_bounds),
            min_ess=effective_sample_size(log_weights),
            final_particles=len(particles),
        )
        yield PowerSample(
            token_ids=answer.token_ids,
            logprobs=answer.logprobs,
            top_logprobs=answer.top_logprobs,
            finish_reason="stop" if answer.ended else "length",
            stats=stats,
        )

    async def _particle(
        self,
        prompt_ids: Sequence[int],
        config: PowerConfig,
        coordinates: tuple[int, int],
        affinity: str,
        stop_at: StopAt | None,
    ) -> tuple[Trajectory, float]:
        """One whole constrained answer and its log importance weight. Its ``logprobs`` are the
        base model's unmasked ones (the self-reward), its ``top_logprobs`` the engine's, over the
        allowed tokens."""
        info = self.engine.info
        seed = (*coordinates, "constrained")
        options = proposal_options(config, info.vocab_size, max_tokens=config.max_tokens, seed=seed)
        k = options.top_logprobs
        out = await self.engine.complete(prompt_ids, options, affinity=affinity)
        token_ids, masked, top = out.token_ids, out.logprobs, out.top_logprobs
        ended = bool(token_ids) and token_ids[-1] in info.eos_token_ids
        if stop_at is not None and (keep := stop_at(token_ids)) is not None:
            token_ids, masked, top = token_ids[:keep], masked[:keep], top[:keep]
            ended = True
        if not token_ids:
            return Trajectory(ended=ended), 0.0
        unmasked = await self.engine.score([*prompt_ids, *token_ids], len(prompt_ids))
        pairs = [log_normaliser(config.alpha, alts, k, info.vocab_size) for alts in top]
        zetas = [
            config.alpha * (p - p_masked) + zeta
            for p, p_masked, (zeta, _) in zip(unmasked, masked, pairs, strict=True)
        ]
        bounds = [bound for _, bound in pairs]
        return Trajectory(token_ids, unmasked, zetas, bounds, top, ended), sum(zetas)
