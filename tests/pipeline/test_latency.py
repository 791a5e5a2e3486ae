"""The estimates behind power_latency_target: what an answer of each sampler and size takes, learnt
from finished answers, and the largest size that fits a target."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.pipeline.latency import MAX_SIZES, LatencyEstimates, fit_latency
from service.power import PowerChoice, PowerConfig

SMC = PowerConfig(max_tokens=64, method="smc", particles=8)
MH = PowerConfig(max_tokens=64, method="mh", mcmc_steps=10, block_size=16)


def learnt(**rates: float) -> LatencyEstimates:
    """Estimates that have seen one answer of 100 tokens per sampler key ("plain", "smc_4", ...)."""
    estimates = LatencyEstimates()
    for name, rate in rates.items():
        sampler, _, size = name.partition("_")
        estimates.observe(sampler, int(size or 1), seconds=rate * 100, tokens=100)
    return estimates


def test_nothing_is_predicted_before_an_answer_ran() -> None:
    estimates = LatencyEstimates()
    assert estimates.predict(SMC) is None
    config, choice = fit_latency(SMC, PowerChoice("default"), 0.001, estimates)
    assert config == SMC  # no estimate: the route's own size, and the report says none was made
    assert choice == PowerChoice("default", latency_target=0.001, predicted_latency_s=None)


def test_an_answer_is_priced_at_max_tokens_from_its_own_size_or_from_plain_tokens() -> None:
    estimates = learnt(plain=0.01, smc_4=0.02)
    assert estimates.predict(replace(SMC, particles=4)) == pytest.approx(0.02 * 64)
    assert estimates.predict(SMC) == pytest.approx(0.01 * 8 * 64)  # unseen: every particle paid
    assert estimates.predict(MH) == pytest.approx(0.01 * MH.planned_cost() * 64)


def test_the_estimate_follows_recent_answers_and_ignores_empty_ones() -> None:
    estimates = learnt(plain=0.01)
    for _ in range(30):
        estimates.observe("plain", 1, seconds=2.0, tokens=100)  # the engine got slower
    estimates.observe("plain", 1, seconds=5.0, tokens=0)
    assert estimates.rates[("plain", 1)] == pytest.approx(0.02, rel=0.01)


@pytest.mark.parametrize(
    ("target", "particles", "chosen_by"),
    [(100.0, 8, "default"), (2.0, 3, "latency_target"), (0.1, 1, "latency_target")],
)
def test_the_largest_size_that_fits_and_one_particle_when_none_does(
    target: float, particles: int, chosen_by: str
) -> None:
    config, choice = fit_latency(SMC, PowerChoice("default"), target, learnt(plain=0.01))
    assert config.particles == particles
    assert choice.chosen_by == chosen_by and choice.latency_target == target
    assert choice.predicted_latency_s == pytest.approx(0.01 * particles * 64)


def test_mh_steps_fit_the_target_down_to_plain_sampling() -> None:
    estimates = learnt(plain=0.01)
    config, _ = fit_latency(MH, PowerChoice("default"), 3.0, estimates)
    assert 0 < config.mcmc_steps < MH.mcmc_steps
    one_more = replace(config, mcmc_steps=config.mcmc_steps + 1)
    assert estimates.predict(config) <= 3.0 < estimates.predict(one_more)  # type: ignore[operator]
    config, _ = fit_latency(MH, PowerChoice("default"), 0.01, estimates)
    assert config.mcmc_steps == 0


def test_the_sizes_remembered_are_bounded_and_the_stalest_goes_first() -> None:
    estimates = learnt(plain=0.01)
    for steps in range(3 * MAX_SIZES):  # a client trying every number of MH steps
        estimates.observe("mh", steps, seconds=1.0, tokens=10)
        estimates.observe("plain", 1, seconds=1.0, tokens=100)  # plain keeps being seen
    assert len(estimates.rates) == MAX_SIZES
    assert ("plain", 1) in estimates.rates and ("mh", 3 * MAX_SIZES - 1) in estimates.rates
    assert ("mh", 0) not in estimates.rates
