"""Power sampling: answers from p(y | x) ** alpha by suffix Metropolis-Hastings on an engine."""

from service.power.config import PowerConfig
from service.power.normaliser import log_normaliser
from service.power.sampler import ChainStats, FrozenTokens, PowerSample, PowerSampler

__all__ = [
    "ChainStats",
    "FrozenTokens",
    "PowerConfig",
    "PowerSample",
    "PowerSampler",
    "log_normaliser",
]
