"""How many particles (or steps) a power answer runs, when the request leaves it to the route.

Particles are sequences of one engine batch, so what they cost depends on the batch: where it has
width to spare (a GPU's memory-bound decode), eight particles on an idle engine take barely longer
than four, and on a full one every particle is paid in full. With ``power_particles_max`` above
``power_particles``, a request that sets no ``power_particles`` gets what the batch has room for
(``power_batch_room`` less the sequences in flight), between the two; a seeded one gets
``power_particles``, so that its answer does not depend on the load. The answer then follows the
load while it runs (PowerConfig.follow_load): at each resampling point it lets particles go, down to
``power_particles``, when the engine's other sequences have grown into the room (the first requests
of a burst see an idle engine). (Off by default: on 2 CPU cores eight particles took 1.40x the
latency of four, docs/benchmarks/particles.md.)

``power_budget`` (the request's, or its key's) caps what the answer may cost in tokens generated
per token returned: the route lowers N (or MH's steps) to fit, and refuses a request whose own
parameters do not.
"""

from __future__ import annotations

import math
from dataclasses import replace

from service.config import Settings
from service.errors import InvalidRequestError
from service.power import FollowLoad, PowerChoice, PowerConfig

__all__ = ["default_particles", "fit_budget", "load_share"]


def load_share(settings: Settings) -> FollowLoad:
    """The room in the engine's batch, and the fewest particles a load-sized answer runs: what
    sizes its N at admission and what it keeps while it runs."""
    return FollowLoad(fewest=settings.power_particles, room=settings.power_batch_room)


def default_particles(settings: Settings, *, load: int, seeded: bool) -> tuple[int, PowerChoice]:
    """N for a request that sets none: the room the batch has, within the operator's bounds."""
    low, high = settings.power_particles, settings.power_particles_max
    if high <= low:
        return low, PowerChoice("default")
    if seeded:  # the same seed must give the same answer, whatever else the engine runs
        return low, PowerChoice("seed")
    return load_share(settings).keep(high, load), PowerChoice("load", engine_load=load)


def fit_budget(
    config: PowerConfig, choice: PowerChoice, budget: float, *, asked: bool
) -> tuple[PowerConfig, PowerChoice]:
    """``config`` within ``budget`` tokens generated per token returned. What the request set
    itself (``asked``) is never changed: it fits, or the request is refused."""
    if config.planned_cost() <= budget:
        return config, replace(choice, budget=budget)
    if asked:
        what = (
            f"power_particles={config.particles}"
            if config.method == "smc"
            else f"mcmc_steps={config.mcmc_steps} with block_size={config.block_tokens}"
        )
        raise InvalidRequestError(
            f"{what} costs about {config.planned_cost():.1f} tokens generated per token returned, "
            f"over power_budget={budget:g}. Raise power_budget, or leave the sampler's size to the "
            "route.",
            param="power_budget",
        )
    if config.method == "smc":
        fitted = replace(config, particles=max(1, math.floor(budget)))
    else:
        horizons = sum(config.horizon(b) for b in range(1, config.num_blocks + 1))
        steps = math.floor((budget - 1) * config.max_tokens / horizons)
        fitted = replace(config, mcmc_steps=max(0, steps))
    return fitted, PowerChoice("budget", engine_load=choice.engine_load, budget=budget)
