"""What a power answer will take, from what recent answers took: the estimates behind
``power_latency_target``.

Particles decode in one engine batch, so an SMC answer takes about its length times the time of one
batched decoding step; an MH chain decodes its proposals one after another, so it takes about the
tokens it generates times one plain step. Both are learnt per gateway process from finished
answers, as seconds per returned token (a moving average, so they follow the engine's load):

- for the sampler and size that ran (``smc`` with N particles, ``mh`` with S steps), and
- for plain sampling, which prices a size not seen yet at its token cost: N particles at N times a
  plain token (every particle paid in full, as on a full batch), MH at its planned tokens per
  returned token. That errs long, so the route picks a smaller size than it might, never a larger.

An answer is priced at ``max_tokens`` tokens (the longest it may be): a target is a bound the caller
wants kept, and answers that end sooner come in under it.
"""

from __future__ import annotations

from dataclasses import replace

from service.power import PowerChoice, PowerConfig

__all__ = ["MAX_SIZES", "LatencyEstimates", "fit_latency", "sampler_size"]

# Weight of the newest answer in each moving average.
_SMOOTHING = 0.2
# Sizes remembered at most (a client may ask for any number of MH steps): the oldest seen goes.
MAX_SIZES = 64


def sampler_size(config: PowerConfig) -> tuple[str, int]:
    """What an estimate is kept by: the method and its size (particles, or MH steps)."""
    return config.method, config.particles if config.method == "smc" else config.mcmc_steps


class LatencyEstimates:
    """Seconds per returned token of recent answers, by sampler and size (``("plain", 1)`` for the
    plain route)."""

    def __init__(self) -> None:
        self.rates: dict[tuple[str, int], float] = {}

    def observe(self, sampler: str, size: int, seconds: float, tokens: int) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        rate = seconds / tokens
        old = self.rates.pop((sampler, size), None)
        self.rates[(sampler, size)] = rate if old is None else old + _SMOOTHING * (rate - old)
        if len(self.rates) > MAX_SIZES:  # the one observed longest ago
            del self.rates[next(iter(self.rates))]

    def predict(self, config: PowerConfig) -> float | None:
        """Seconds for an answer of ``config.max_tokens`` tokens; None before any answer ran."""
        seen = self.rates.get(sampler_size(config))
        if seen is not None:
            return seen * config.max_tokens
        plain = self.rates.get(("plain", 1))
        if plain is None:
            return None
        return plain * config.planned_cost() * config.max_tokens


def fit_latency(
    config: PowerConfig, choice: PowerChoice, target: float, estimates: LatencyEstimates
) -> tuple[PowerConfig, PowerChoice]:
    """The largest size up to ``config``'s whose estimate is within ``target`` seconds; the
    smallest (one particle, or no MH step: plain sampling at temperature 1/alpha) when none is.
    Without estimates yet, ``config`` as it is."""
    if config.method == "smc":
        sizes = [replace(config, particles=n) for n in range(config.particles, 0, -1)]
    else:
        sizes = [replace(config, mcmc_steps=s) for s in range(config.mcmc_steps, -1, -1)]
    for candidate in sizes:
        predicted = estimates.predict(candidate)
        if predicted is None or predicted <= target:
            break
    chosen_by = choice.chosen_by if candidate == config else "latency_target"
    return candidate, replace(
        choice, chosen_by=chosen_by, latency_target=target, predicted_latency_s=predicted
    )
