"""The one interface the request path runs power samplers through, whichever method a request asks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from service.engines.base import Engine
from service.power.config import PowerConfig
from service.power.constrained import ConstrainedPowerSampler
from service.power.mh import SuffixMHSampler
from service.power.proposal import StopAt
from service.power.sample import FinalTokens, PowerSample
from service.power.smc import PowerSMCSampler

__all__ = ["Sampler", "sampler_for"]


class Sampler(Protocol):
    def run(
        self,
        prompt_ids: Sequence[int],
        config: PowerConfig,
        *,
        run_id: int = 0,
        stop_at: StopAt | None = None,
    ) -> AsyncIterator[FinalTokens | PowerSample]:
        """Draw one answer: ``FinalTokens`` as tokens become final, the ``PowerSample`` last.
        ``run_id`` tells apart the independent runs of one request (its choices)."""
        ...


def sampler_for(config: PowerConfig, engine: Engine) -> Sampler:
    """The sampler of ``config``: its method's, or importance sampling under a constraint."""
    if config.constraint is not None:
        return ConstrainedPowerSampler(engine)
    return SuffixMHSampler(engine) if config.method == "mh" else PowerSMCSampler(engine)
