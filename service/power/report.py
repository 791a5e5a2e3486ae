"""What a power answer cost and how its sampler moved: typed, from the sampler to the response."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict

from service.power.config import PowerConfig, PowerMethod

__all__ = ["ChosenBy", "PowerChoice", "PowerReport", "SamplerStats"]

# What set the sampler's size: the request's own parameters, the operator's default (fixed N, or
# MH's steps), the fixed N of a seeded request, the engine's load, or the request's power_budget
# (service/pipeline/power_choice.py).
ChosenBy = Literal["request", "default", "seed", "load", "budget", "latency_target"]


@dataclass(frozen=True)
class PowerChoice:
    """Why the power route runs the sampler's size it runs: for the report and the metrics."""

    chosen_by: ChosenBy
    # Engine sequences in flight when the route chose (load-adaptive N).
    engine_load: int | None = None
    # The most tokens generated per returned token the caller would pay.
    budget: float | None = None
    # The seconds the caller would wait, and what the route expected the size it chose to take
    # (None before it had seen an answer to learn from).
    latency_target: float | None = None
    predicted_latency_s: float | None = None


@dataclass
class SamplerStats:
    """One answer's sampler run (an MH chain or an SMC particle system)."""

    method: PowerMethod = "mh"
    # Every token the engine generated for this answer: growth, proposals (rejected included) and
    # every particle's tokens.
    tokens_generated: int = 0
    # Bound on log pi_alpha(y) - log(what the sampler targets) for the returned answer, from
    # normalisers computed on top-k log-probs; 0 when they covered the vocabulary.
    normaliser_error_bound: float = 0.0
    # MH: proposals made and accepted.
    proposals: int = 0
    accepted: int = 0
    # SMC: resampling events, and the smallest effective sample size seen before one.
    resamples: int = 0
    min_ess: float | None = None
    # SMC: the particles at the end (fewer than N where the engine's load grew: FollowLoad).
    final_particles: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields of the method that ran."""
        smc = ("resamples", "min_ess", "final_particles")
        mine = ("proposals", "accepted") if self.method == "mh" else smc
        shared = ("tokens_generated", "normaliser_error_bound")
        return {name: getattr(self, name) for name in (*shared, *mine)}


@dataclass
class PowerReport:
    """The power route's report of one request, summed over its answers (the ``power`` object)."""

    # alpha = inf (the maximum-likelihood limit) survives the cache's JSON round trip.
    __pydantic_config__ = ConfigDict(ser_json_inf_nan="strings")

    method: PowerMethod
    alpha: float
    block_size: int
    tokens_generated: int
    cost_multiplier: float | None
    normaliser_error_bound: float
    # MH
    mcmc_steps: int | None = None
    stream_lag: int | None = None
    proposals: int | None = None
    accepted: int | None = None
    acceptance_rate: float | None = None
    # SMC
    particles: int | None = None
    # The fewest particles an answer ended with: below particles where the engine's load grew
    # during the answer and N had been chosen by the load (PowerConfig.follow_load).
    final_particles: int | None = None
    resamples: int | None = None
    min_ess: float | None = None
    # PowerChoice's fields: what set N or the steps, the engine sequences in flight when the load
    # did, the request's power_budget and power_latency_target, and the latency expected.
    chosen_by: ChosenBy | None = None
    engine_load: int | None = None
    budget: float | None = None
    latency_target: float | None = None
    predicted_latency_s: float | None = None
    # SMC: how it resampled.
    resampling: str | None = None
    resample_at: str | None = None

    @classmethod
    def summarise(
        cls,
        config: PowerConfig,
        runs: Sequence[SamplerStats],
        returned_tokens: int,
        choice: PowerChoice | None = None,
    ) -> PowerReport:
        generated = sum(run.tokens_generated for run in runs)
        report = cls(
            method=config.method,
            alpha=config.alpha,
            block_size=config.block_tokens,
            tokens_generated=generated,
            cost_multiplier=generated / returned_tokens if returned_tokens else None,
            normaliser_error_bound=max((run.normaliser_error_bound for run in runs), default=0.0),
            chosen_by=None if choice is None else choice.chosen_by,
            engine_load=None if choice is None else choice.engine_load,
            budget=None if choice is None else choice.budget,
            latency_target=None if choice is None else choice.latency_target,
            predicted_latency_s=None if choice is None else choice.predicted_latency_s,
        )
        if config.method == "mh":
            proposals = sum(run.proposals for run in runs)
            accepted = sum(run.accepted for run in runs)
            report.mcmc_steps = config.mcmc_steps
            report.stream_lag = config.stream_lag
            report.proposals, report.accepted = proposals, accepted
            report.acceptance_rate = accepted / proposals if proposals else None
        else:
            ess = [run.min_ess for run in runs if run.min_ess is not None]
            report.particles = config.particles
            finals = [run.final_particles for run in runs if run.final_particles is not None]
            report.final_particles = min(finals, default=config.particles)
            report.resampling = config.resampling
            report.resample_at = config.resample_at
            report.resamples = sum(run.resamples for run in runs)
            report.min_ess = min(ess, default=None)
        return report

    def to_json(self) -> dict[str, Any]:
        """The response's ``power`` object: the fields of the method that ran (alpha = inf as "inf")."""
        mh = ("mcmc_steps", "stream_lag", "proposals", "accepted", "acceptance_rate")
        smc = ("particles", "final_particles", "resamples", "min_ess", "resampling", "resample_at")
        skip = smc if self.method == "mh" else mh
        optional = ("engine_load", "budget", "latency_target", "predicted_latency_s")
        unset = {k for k in optional if getattr(self, k) is None}
        data = {k: v for k, v in self.__dict__.items() if k not in skip and k not in unset}
        data["alpha"] = self.alpha if math.isfinite(self.alpha) else "inf"
        return data
