"""Exact laws of the sampler on the tiny model (no sampling noise): what each fix of the reference
algorithm buys, and that fidelity to p**alpha is a function of mcmc_steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.oracle import chain_law, chain_run
from loadtests.stats import total_variation
from loadtests.tiny_model import EOS_ID, ExactModel, build_tiny_model
from tests.conftest import TINY_PROMPT

ALPHA = 2.0
HORIZON = 3


@pytest.fixture(scope="module")
def exact(tiny_model_dir: Path) -> ExactModel:
    return ExactModel(tiny_model_dir, TINY_PROMPT)


def distance(exact: ExactModel, steps: int, **variant: bool) -> float:
    law = chain_law(
        exact.next_logprobs,
        eos=EOS_ID,
        alpha=ALPHA,
        max_tokens=HORIZON,
        block_size=1,
        mcmc_steps=steps,
        **variant,
    )
    assert abs(sum(law.values()) - 1) < 1e-9
    return total_variation(law, exact.power_distribution(HORIZON, ALPHA))


def test_the_exact_chain_converges_to_p_to_the_alpha(exact: ExactModel) -> None:
    distances = [distance(exact, steps) for steps in (0, 5, 10, 20, 40)]
    assert distances == sorted(distances, reverse=True)
    assert distances[0] == pytest.approx(
        total_variation(
            exact.tempered_distribution(HORIZON, 1 / ALPHA), exact.power_distribution(HORIZON, ALPHA)
        )
    )  # no steps: plain sampling at temperature 1/alpha
    assert distances[-1] < 1e-3


def test_stopping_ended_chains_converges_to_the_wrong_law(exact: ExactModel) -> None:
    assert distance(exact, 40, stop_at_eos=True) > 0.3
    assert distance(exact, 40, stop_at_eos=True) > distance(exact, 10, stop_at_eos=True)


def test_dropping_the_cut_point_correction_leaves_a_bias(exact: ExactModel) -> None:
    assert distance(exact, 40) < 1e-4
    assert distance(exact, 40, cut_correction=False) > 10 * distance(exact, 40)


def test_ended_chains_finishing_at_the_final_horizon_cost_less_for_more(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A chain whose answer ended takes its last N steps at the final horizon and stops, instead of N
    steps at every later block's horizon. On a model whose likely answers end early (seed 2: 23% of
    p**4's mass ends before the horizon), that generates fewer tokens and lands closer to
    p**alpha, at every number of steps; its stationary law is still exactly p**alpha."""
    model_dir = build_tiny_model(tmp_path_factory.mktemp("short") / "short", seed=2, weight_scale=10.0)
    exact = ExactModel(model_dir, TINY_PROMPT)
    horizon, alpha = 4, 4.0
    target = exact.power_distribution(horizon, alpha)
    settings = dict(eos=EOS_ID, alpha=alpha, max_tokens=horizon, block_size=1)
    for steps in (5, 10):
        final, final_tokens = chain_run(exact.next_logprobs, mcmc_steps=steps, **settings)
        every, every_tokens = chain_run(
            exact.next_logprobs, mcmc_steps=steps, ended_schedule="every_block", **settings
        )
        assert final_tokens < every_tokens
        assert total_variation(final, target) < 0.8 * total_variation(every, target)
