"""Power sampling: answers from p(y | x) ** alpha on an engine, by suffix Metropolis-Hastings (the
exact reference, mh.py) or by Power-SMC particles (fast, smc.py), and restricted to the answers a
grammar accepts by importance sampling (constrained.py), behind one interface."""

from service.power.config import (
    POWER_METHODS,
    RESAMPLE_POINTS,
    RESAMPLING_SCHEMES,
    FollowLoad,
    PowerConfig,
    PowerMethod,
    ResampleAt,
    Resampling,
)
from service.power.constrained import ConstrainedPowerSampler
from service.power.mh import SuffixMHSampler
from service.power.normaliser import log_normaliser
from service.power.proposal import StopAt, Trajectory
from service.power.report import ChosenBy, PowerChoice, PowerReport, SamplerStats
from service.power.sample import FinalTokens, PowerSample
from service.power.samplers import Sampler, sampler_for
from service.power.smc import PowerSMCSampler

__all__ = [
    "POWER_METHODS",
    "RESAMPLE_POINTS",
    "RESAMPLING_SCHEMES",
    "ChosenBy",
    "ConstrainedPowerSampler",
    "FinalTokens",
    "FollowLoad",
    "PowerChoice",
    "PowerConfig",
    "PowerMethod",
    "PowerReport",
    "PowerSMCSampler",
    "PowerSample",
    "ResampleAt",
    "Resampling",
    "Sampler",
    "SamplerStats",
    "StopAt",
    "SuffixMHSampler",
    "Trajectory",
    "log_normaliser",
    "sampler_for",
]
