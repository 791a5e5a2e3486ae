"""Power sampling by suffix Metropolis-Hastings, exactly: the reference sampler.

References:
  Karan & Du, "Reasoning with Sampling: Your Base Model is Smarter Than You Think", arXiv 2510.14901
  (Algorithm 1, the block-wise suffix sampler followed here).
  Tomihari & Sato, "Power Distribution Bridges Sampling, Self-Reward RL, and Self-Distillation",
  arXiv 2605.04542 (why p**alpha is worth sampling, and distilling).

Target: pi_alpha(y | x) ∝ p(y | x) ** alpha over answers y of at most max_tokens tokens, each ended by
EOS (or a stop string: absorbing too) or cut by max_tokens. Proposal q: the base model at temperature
1/alpha, no top-k, no top-p. With
zeta_t = log sum_v p(v | y_<t) ** alpha (see normaliser.py), q(y_t) = p(y_t) ** alpha / exp(zeta_t).

For blocks b = 1..K of B tokens, with horizon H_b = min(b * B, max_tokens):

  1. Grow.   An answer that has not ended is extended to H_b with q.
  2. Mix.    N Metropolis-Hastings steps on the whole answer y, at horizon H_b:
       a. cut:     m uniform over the positions 0..|y|-1 of y (the unfrozen ones, with a stream lag);
       b. propose: y' = y_<m + s, with s drawn from q after x, y_<m, until EOS or H_b;
       c. accept with probability min(1, A), where
              log A = sum_{t>=m} zeta_t(y') - sum_{t>=m} zeta_t(y) + log |y| - log |y'|.

Why this is exact, where the reference code is not:
  - EOS is absorbing and the horizon is fixed: proposals run to EOS or H_b, never only to the current
    length, and both sums cover the whole suffix. Truncating them biases the chain toward short answers.
  - The cut is uniform over |y| positions, so the reverse move is chosen with chance 1/|y'|: the ratio
    gains log |y| - log |y'|. Dropping it leaves the chain off target however long it runs.
  - Answers that ended keep moving: a cut can regrow them. Stopping a chain at EOS, as the reference
    code does, converges to the wrong distribution. An answer that ended before the last block takes
    its remaining N steps at the final horizon (the target's own kernel), then the chain is done.
  - Every proposal has its own well-separated seed (engines.base.derive_seed).

Chains only ever await the engine, so all chains of all requests submit proposals concurrently and the
engine batches them; a cut at m reuses the engine's prefix cache for x + y_<m.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence

import numpy as np

from service.engines.base import Engine
from service.power.config import PowerConfig
from service.power.proposal import StopAt, Trajectory, propose
from service.power.report import SamplerStats
from service.power.sample import FinalTokens, PowerSample

__all__ = ["SuffixMHSampler", "log_accept_ratio"]


class SuffixMHSampler:
    """Draws answers from p(y | x) ** alpha through any ``Engine``, one MH chain per answer."""

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
        """Run one chain, yielding ``FinalTokens`` as blocks freeze (only with ``stream_lag``) and
        the ``PowerSample`` last.

        With ``stream_lag = L``, cuts during block b are restricted to blocks b-L..b: older blocks
        are final and streamed at once. That trades exactness for time to the first token; with no
        lag nothing is final until the chain ends, because any step may cut anywhere.
        """
        chain = run_id
        # numpy takes unsigned seed words; OpenAI seeds may be any 64-bit integer, negative too.
        rng = np.random.default_rng(None if config.seed is None else [config.seed % 2**64, chain])
        # Every step of this chain goes to the same engine worker, whose prefix cache holds its prefix.
        affinity = uuid.uuid4().hex
        stats = SamplerStats()
        answer = Trajectory()
        frozen = 0

        async def draw(prefix: Trajectory, horizon: int, seed: tuple[int | str, ...]) -> Trajectory:
            return await propose(
                self.engine,
                prompt_ids,
                prefix,
                horizon,
                config,
                seed=(chain, *seed),
                affinity=affinity,
                stop_at=stop_at,
            )

        async def mh_step(horizon: int, seed: tuple[int | str, ...]) -> Trajectory:
            """One Metropolis-Hastings step on ``answer`` at ``horizon``: the chain's next state."""
            # a. cut, uniform over the unfrozen positions
            cut = frozen + int(rng.integers(len(answer) - frozen))
            # b. propose a new suffix from the cut to EOS, a stop or the horizon
            suffix = await draw(answer.prefix(cut), horizon, seed)
            candidate = answer.prefix(cut).extended(suffix)
            stats.proposals += 1
            stats.tokens_generated += len(suffix)
            # c. accept or reject
            log_accept = log_accept_ratio(answer, candidate, cut, frozen, config.alpha)
            if log_accept >= 0 or rng.random() < math.exp(log_accept):
                stats.accepted += 1
                return candidate
            return answer

        for block in range(1, config.num_blocks + 1):
            horizon = config.horizon(block)

            if config.stream_lag is not None:
                newly_frozen = min(len(answer), (block - 1 - config.stream_lag) * config.block_tokens)
                if newly_frozen > frozen:
                    yield FinalTokens(
                        answer.token_ids[frozen:newly_frozen],
                        answer.logprobs[frozen:newly_frozen],
                        answer.top_logprobs[frozen:newly_frozen],
                    )
                    frozen = newly_frozen

            # An answer that ended takes its last steps at the final horizon, whose kernel keeps
            # p**alpha invariant, and the chain is done: regrowing it at every later block's horizon
            # cost tokens and bought no fidelity (tests/power/test_oracle.py measures both).
            if answer.ended and block > 1:
                for step in range(config.mcmc_steps):
                    if len(answer) <= frozen:
                        break
                    answer = await mh_step(config.max_tokens, (block, "final", step))
                break

            # 1. Grow: an answer that has not ended reaches the new horizon.
            if not answer.ended and len(answer) < horizon:
                growth = await draw(answer, horizon, (block, "grow"))
                stats.tokens_generated += len(growth)
                answer = answer.extended(growth)

            # 2. Mix: Metropolis-Hastings steps at this horizon.
            for step in range(config.mcmc_steps):
                if len(answer) <= frozen:
                    break  # everything is frozen: no cut left to make
                answer = await mh_step(horizon, (block, step))

        stats.normaliser_error_bound = sum(answer.zeta_bounds)
        yield PowerSample(
            token_ids=answer.token_ids,
            logprobs=answer.logprobs,
            top_logprobs=answer.top_logprobs,
            finish_reason="stop" if answer.ended else "length",
            stats=stats,
        )


def log_accept_ratio(
    current: Trajectory, candidate: Trajectory, cut: int, frozen: int, alpha: float
) -> float:
    """log A for replacing ``current`` by ``candidate``, which share the first ``cut`` tokens."""
    if math.isinf(alpha):
        # alpha -> inf: the sign of the change in log p dominates every other term.
        gain = sum(candidate.logprobs[cut:]) - sum(current.logprobs[cut:])
        return 0.0 if gain >= 0 else -math.inf
    # pi(y') q(y_s) / (pi(y) q(y'_s)) reduces to the normalisers of the two suffixes ...
    log_ratio = sum(candidate.zetas[cut:]) - sum(current.zetas[cut:])
    # ... and the cut, uniform over |y| positions forward and |y'| back, adds log |y| / |y'|.
    return log_ratio + math.log(len(current) - frozen) - math.log(len(candidate) - frozen)
