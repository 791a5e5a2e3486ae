"""Parameters of power sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from service.engines.base import Constraint

__all__ = [
    "POWER_METHODS",
    "RESAMPLE_POINTS",
    "RESAMPLING_SCHEMES",
    "FollowLoad",
    "PowerConfig",
    "PowerMethod",
    "ResampleAt",
    "Resampling",
]

PowerMethod = Literal["mh", "smc"]
POWER_METHODS: tuple[PowerMethod, ...] = ("mh", "smc")
Resampling = Literal["systematic", "chopthin"]
RESAMPLING_SCHEMES: tuple[Resampling, ...] = ("systematic", "chopthin")
ResampleAt = Literal["block", "kv_block"]
RESAMPLE_POINTS: tuple[ResampleAt, ...] = ("block", "kv_block")


@dataclass(frozen=True)
class FollowLoad:
    """SMC particles that follow the engine's load over the answer's life: at every resampling
    point the answer keeps at most ``room`` less the sequences the engine runs for others, and at
    least ``fewest`` (or its N, if fewer). It only lets particles go: a request whose N was chosen on
    an idle engine gives the room back when a burst arrives after it (smc.py)."""

    fewest: int
    room: int

    def __post_init__(self) -> None:
        if self.fewest < 1 or self.room < 1:
            raise ValueError(f"follow_load needs fewest and room >= 1, got {self}")

    def keep(self, particles: int, others: int) -> int:
        """Particles an answer of ``particles`` keeps while the engine runs ``others`` more."""
        return max(min(self.fewest, particles), min(particles, self.room - others))


@dataclass(frozen=True, kw_only=True)
class PowerConfig:
    """How to sample one answer from p(y | x) ** alpha. Keyword-only; invalid values raise
    ``ValueError`` naming the field::

        PowerConfig(max_tokens=256)                           # the paper's defaults: alpha 4, 10 steps
        PowerConfig(max_tokens=64, alpha=2.0, mcmc_steps=40)  # milder target, better mixed chain
        PowerConfig(max_tokens=64, alpha=math.inf)            # search for the most likely answer
        PowerConfig(max_tokens=64, method="smc", particles=8) # particles instead of a chain
    """

    # Length of the answer, in tokens; also the final horizon of the chain.
    max_tokens: int
    # "mh": suffix Metropolis-Hastings (mh.py), exact at any number of steps once mixed;
    # "smc": Power-SMC particles (smc.py), asymptotically exact in the number of particles.
    method: PowerMethod = "mh"
    # Exponent of the target. 1 is plain sampling; inf is the maximum-likelihood limit, where
    # proposals (then drawn at temperature 1) are accepted only when they raise log p(y | x).
    alpha: float = 4.0
    # Metropolis-Hastings steps after each block (N). Fidelity to p**alpha grows with it: a chain
    # with few steps has not mixed, whatever the implementation.
    mcmc_steps: int = 10
    # Tokens per block (B); None means max_tokens // 16 (the paper's choice), at least 1. For SMC,
    # the tokens particles grow between two reweighting (and possible resampling) points.
    block_size: int | None = None
    # SMC: number of particles (N), the share of N under which the effective sample size
    # triggers resampling, and how (smc.py: systematic, or chopthin).
    particles: int = 4
    resample_threshold: float = 0.5
    resampling: Resampling = "systematic"
    # SMC: the horizons where it may resample. "block": every block's. "kv_block": only those where
    # a copy's prompt ends at most one block past a whole block of the engine's prefix cache
    # (kv_block tokens), so that a copy prefills at most block_tokens tokens, not up to kv_block;
    # the weights are still updated every block, and at those horizons it resamples unless the
    # weights are even (may_resample, ess_threshold).
    resample_at: ResampleAt = "block"
    kv_block: int | None = None
    # SMC: one engine request per particle for the whole answer (smc.py). False re-submits every
    # growing particle as a new request each block, as the sampler did before; the same law, kept
    # so that make bench-particles can measure the two in one run.
    held_particles: bool = True
    # SMC: let particles go as the engine's load grows (the route sets it where the load chose N).
    follow_load: FollowLoad | None = None
    # Stop strings: absorbing, like EOS, so the target is p**alpha over answers that end at one.
    stop: tuple[str, ...] = ()
    # Raw top-k log-probs fetched per proposed token to compute the normalisers zeta_t; exact when
    # k covers the vocabulary, otherwise a lower bound whose error is reported.
    top_logprobs: int = 20
    # Freeze blocks older than this many blocks and stream them early; None keeps the sampler
    # exact (nothing is final until the chain ends). See SuffixMHSampler.run.
    stream_lag: int | None = None
    # Makes the chain reproducible: cut points, acceptances and every proposal are derived from it.
    seed: int | None = None
    # What the answer must match: the target becomes p**alpha restricted to the answers the
    # constraint accepts (constrained.py; smc only: the engine's grammar cannot resume a prefix).
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if math.isnan(self.alpha) or self.alpha < 1:
            raise ValueError(f"alpha must be >= 1, got {self.alpha}")
        if self.mcmc_steps < 0:
            raise ValueError(f"mcmc_steps must be >= 0, got {self.mcmc_steps}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {self.top_logprobs}")
        if self.method not in POWER_METHODS:
            raise ValueError(f"method must be one of {', '.join(POWER_METHODS)}, got {self.method!r}")
        if self.particles < 1:
            raise ValueError(f"particles must be >= 1, got {self.particles}")
        if self.resampling not in RESAMPLING_SCHEMES:
            raise ValueError(
                f"resampling must be one of {', '.join(RESAMPLING_SCHEMES)}, got {self.resampling!r}"
            )
        if self.resample_at not in RESAMPLE_POINTS:
            raise ValueError(
                f"resample_at must be one of {', '.join(RESAMPLE_POINTS)}, got {self.resample_at!r}"
            )
        if self.kv_block is not None and self.kv_block < 1:
            raise ValueError(f"kv_block must be >= 1, got {self.kv_block}")
        if not 0 <= self.resample_threshold <= 1:
            raise ValueError(f"resample_threshold must be in [0, 1], got {self.resample_threshold}")
        if self.method == "smc" and math.isinf(self.alpha):
            raise ValueError("alpha must be finite with the smc method (its weights vanish at inf)")
        if self.stream_lag is not None and self.method == "smc":
            raise ValueError("stream_lag applies to the mh method only (smc streams exactly)")
        if self.constraint is not None and self.method != "smc":
            raise ValueError("constraint needs the smc method (mh regrows suffixes from a cut)")
        if self.follow_load is not None and self.method != "smc":
            raise ValueError("follow_load applies to the smc method only")
        if self.stream_lag is not None and self.stream_lag < 0:
            raise ValueError(f"stream_lag must be >= 0, got {self.stream_lag}")

    @property
    def block_tokens(self) -> int:
        """B: the block size in effect."""
        if self.block_size is not None:
            return min(self.block_size, self.max_tokens)
        return max(1, self.max_tokens // 16)

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.max_tokens / self.block_tokens)

    def horizon(self, block: int) -> int:
        """Length limit of answers during block ``block`` (1-based): its last position."""
        return min(block * self.block_tokens, self.max_tokens)

    @property
    def sparse_resampling(self) -> bool:
        """Whether may_resample leaves horizons out: "kv_block", held particles, and KV blocks
        longer than an SMC block (with shorter ones a copy never prefills more than a block)."""
        return (
            self.resample_at == "kv_block"
            and self.held_particles
            and self.kv_block is not None
            and self.kv_block > self.block_tokens
        )

    @property
    def ess_threshold(self) -> float:
        """The share of N under which the effective sample size makes SMC resample, where it may.
        On a sparse schedule, 1 (resample unless the weights are even): the next chance is a KV
        block away, and weights uneven now will have degenerated by then."""
        return 1.0 if self.sparse_resampling else self.resample_threshold

    def may_resample(self, prompt_tokens: int, horizon: int) -> bool:
        """Whether SMC may resample at ``horizon`` of an answer to a prompt of ``prompt_tokens``.

        A copy is a new request whose prompt is the prompt and the ancestor's first ``horizon``
        tokens; the prefix cache serves its whole kv_block-token blocks but the last token, and the
        engine prefills the rest (1 to kv_block tokens). With "kv_block", only horizons where that
        rest is at most one SMC block qualify (one in kv_block / block_tokens horizons). Particles
        re-submitted every block prefill anyway: for them every horizon qualifies."""
        kv = self.kv_block
        if kv is None or not self.sparse_resampling:
            return True
        prompt = prompt_tokens + horizon
        uncached = prompt - (prompt - 1) // kv * kv
        return uncached <= self.block_tokens

    @property
    def proposal_temperature(self) -> float:
        """The proposal is the base model at temperature 1/alpha (at 1 in the alpha = inf limit)."""
        return 1.0 if math.isinf(self.alpha) else 1.0 / self.alpha

    def planned_cost(self) -> float:
        """Tokens the engine generates per token returned, as planned (what ``power_budget``
        bounds). SMC: one answer's tokens per particle (a resampled copy continues from its
        ancestor's tokens, and the particle it replaces stopped where the copy starts). MH: the
        worst case, which proposals that end at EOS only undercut."""
        if self.method == "smc":
            return float(self.particles)
        return self.worst_case_tokens() / self.max_tokens

    def worst_case_tokens(self) -> int:
        """Most tokens one answer can make the engine generate. MH: each block's extension plus, per
        step, a proposal that regrows the whole answer up to the block's horizon. SMC: every
        particle's request may run to max_tokens, and so may each copy a resampling starts at a
        horizon (smc.py holds one request per particle; a dropped one is aborted, having run ahead
        by as much as the slowest particle lagged, which is little in one batch)."""
        if self.method == "smc":
            horizons = (self.horizon(b) for b in range(1, self.num_blocks))
            copies = (self.particles - 1) * sum(self.max_tokens - h for h in horizons)
            return self.particles * self.max_tokens + copies
        grow = self.max_tokens
        proposals = self.mcmc_steps * sum(self.horizon(b) for b in range(1, self.num_blocks + 1))
        return grow + proposals
