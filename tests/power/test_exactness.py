"""Power sampling is exact: answers drawn through the running service follow p**alpha.

On the tiny model every answer of up to 3 tokens can be enumerated, so p(y)**alpha is computed
exactly (loadtests/tiny_model.py), and so is the law of the sampler's own output for the settings used
(loadtests/oracle.py propagates every cut, proposal and acceptance). The samples must match that law
within a bound derived from their number, the law must be close to p**alpha, and plain sampling at
temperature 1/alpha must land measurably farther away.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from loadtests.harness import ServiceProcess
from loadtests.oracle import chain_law
from loadtests.stats import empirical, total_variation, tv_bound
from loadtests.tiny_model import EOS_ID, VOCAB, ExactModel
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT

logger = logging.getLogger(__name__)

ALPHA = 4.0  # the service's default: temperature 0.25
HORIZON = 3
BLOCK = 1
STEPS = 40
PER_REQUEST = 256


@pytest.fixture(scope="module")
def exact(tiny_model_dir: Path) -> ExactModel:
    return ExactModel(tiny_model_dir, TINY_PROMPT)


@pytest.fixture(scope="module")
def target(exact: ExactModel) -> dict:
    return exact.power_distribution(HORIZON, ALPHA)


def sampler_law(
    exact: ExactModel,
    mcmc_steps: int,
    stream_lag: int | None = None,
    *,
    block_size: int = BLOCK,
    absorbing: frozenset[int] = frozenset({EOS_ID}),
) -> dict:
    """The exact law of the sampler's answers at these settings (loadtests/oracle.py)."""
    return chain_law(
        exact.next_logprobs,
        eos=absorbing,
        alpha=ALPHA,
        max_tokens=HORIZON,
        block_size=block_size,
        mcmc_steps=mcmc_steps,
        stream_lag=stream_lag,
    )


def draw(
    service: ServiceProcess,
    model: str,
    requests: int,
    n: int = PER_REQUEST,
    prompt: tuple[int, ...] = TINY_PROMPT,
    **params: object,
) -> list[tuple[int, ...]]:
    """Answers (token ids, EOS included) from ``requests`` concurrent requests of ``n`` each."""
    body = {"model": model, "prompt": list(prompt), "max_tokens": HORIZON, "n": n}
    body |= {"logprobs": 0, **params}

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=900) as client:
            responses = await asyncio.gather(
                *(client.post("/completions", json=body) for _ in range(requests))
            )
        for response in responses:
            assert response.status_code == 200, response.text
        return [response.json() for response in responses]

    return [
        tuple(VOCAB[token] for token in choice["logprobs"]["tokens"])
        for response in asyncio.run(run())
        for choice in response["choices"]
    ]


def test_power_route_samples_p_to_the_alpha(
    tiny_service: ServiceProcess, exact: ExactModel, target: dict
) -> None:
    law = sampler_law(exact, STEPS)
    law_to_target = total_variation(law, target)
    samples = draw(
        tiny_service,
        f"{TINY_MODEL_NAME}-power",
        requests=3,
        temperature=1 / ALPHA,
        block_size=BLOCK,
        mcmc_steps=STEPS,
    )
    found = empirical(samples)
    bound = tv_bound(law, len(samples))
    logger.info(
        "power route, %d samples: TV to the chain's exact law %.4f (bound %.4f); "
        "exact law to p**%g %.4f; "
        "samples to p**%g %.4f",
        len(samples),
        total_variation(found, law),
        bound,
        ALPHA,
        law_to_target,
        ALPHA,
        total_variation(found, target),
    )
    # The sampler draws from exactly the law the algorithm defines, which at this many steps is
    # within 0.01 of p**alpha.
    assert total_variation(found, law) <= bound
    assert law_to_target < 0.01


def test_plain_low_temperature_sampling_misses_p_to_the_alpha(
    tiny_service: ServiceProcess, exact: ExactModel, target: dict
) -> None:
    tempered = exact.tempered_distribution(HORIZON, 1 / ALPHA)
    samples = draw(tiny_service, TINY_MODEL_NAME, requests=3, temperature=1 / ALPHA)
    found = empirical(samples)
    bound = tv_bound(tempered, len(samples))
    distance = total_variation(found, target)
    logger.info(
        "plain route at temperature 1/%g, %d samples: TV to p**%g %.4f (exact %.4f)",
        ALPHA,
        len(samples),
        ALPHA,
        distance,
        total_variation(tempered, target),
    )
    assert total_variation(found, tempered) <= bound  # it samples what it should ...
    assert distance > 3 * tv_bound(target, len(samples))  # ... which is far from p**alpha


def test_stream_lag_freezes_blocks_and_lands_where_the_oracle_says(
    tiny_service: ServiceProcess, exact: ExactModel, target: dict
) -> None:
    """The opt-in lag trades exactness for time to first token: measure by how much."""
    steps = 20
    lagged = sampler_law(exact, steps, stream_lag=1)
    exact_chain = sampler_law(exact, steps)
    samples = draw(
        tiny_service,
        f"{TINY_MODEL_NAME}-power",
        requests=2,
        block_size=BLOCK,
        mcmc_steps=steps,
        power_stream_lag=1,
    )
    found = empirical(samples)
    logger.info(
        "stream lag 1 at %d steps: TV to p**%g %.4f (exact law %.4f; without lag %.4f)",
        steps,
        ALPHA,
        total_variation(found, target),
        total_variation(lagged, target),
        total_variation(exact_chain, target),
    )
    assert total_variation(found, lagged) <= tv_bound(lagged, len(samples))
    assert total_variation(lagged, target) > total_variation(exact_chain, target)


def test_blocks_of_two_follow_the_oracle(tiny_service: ServiceProcess, exact: ExactModel) -> None:
    """Growth of several tokens per block, and cuts within a block, are exact too."""
    law = sampler_law(exact, 20, block_size=2)
    samples = draw(tiny_service, f"{TINY_MODEL_NAME}-power", requests=2, block_size=2, mcmc_steps=20)
    found = empirical(samples)
    logger.info("blocks of 2, 20 steps: TV to the exact law %.4f", total_variation(found, law))
    assert total_variation(found, law) <= tv_bound(law, len(samples))


def test_stop_word_is_absorbing_like_eos(tiny_service: ServiceProcess, exact: ExactModel) -> None:
    """With `stop`, the target is p**alpha over answers that end at the stop word: the served law
    matches the chain whose absorbing tokens are EOS and the stop word's token."""
    stop = VOCAB["c"]
    absorbing = frozenset({EOS_ID, stop})
    law = sampler_law(exact, STEPS, absorbing=absorbing)
    target = exact.power_distribution(HORIZON, ALPHA, absorbing)
    samples = draw(
        tiny_service,
        f"{TINY_MODEL_NAME}-power",
        requests=2,
        block_size=BLOCK,
        mcmc_steps=STEPS,
        stop=["c"],
    )
    found = empirical(samples)
    logger.info(
        "stop word as absorbing: TV to the exact law %.4f; exact law to p**%g %.4f",
        total_variation(found, law),
        ALPHA,
        total_variation(law, target),
    )
    assert total_variation(found, law) <= tv_bound(law, len(samples))
    assert total_variation(law, target) < 0.01
    # Every answer ends at its first stop word (no stop within, none after).
    assert all(stop not in y[:-1] for y in samples)
