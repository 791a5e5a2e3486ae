"""Power-SMC through the running service: its law on the enumerable model, its report, its stream.

A pure-Python Power-SMC over the tiny model's exact conditionals (loadtests/smc_reference.py), run 40,000
times, gives the law the served sampler must follow at each number of particles N; the served answers
must match it within a sample-size bound, and their distance to p**alpha must fall with N.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from loadtests.harness import ServiceProcess
from loadtests.smc_reference import smc_law
from loadtests.stats import empirical, total_variation, tv_bound
from loadtests.tiny_model import EOS_ID, ExactModel
from service.power import PowerConfig
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT, start_service, tiny_engine_args
from tests.power.test_exactness import ALPHA, HORIZON, draw

logger = logging.getLogger(__name__)

POWER = f"{TINY_MODEL_NAME}-power"
REFERENCE_RUNS = 40_000
SAMPLES = {4: 384, 16: 384, 64: 256}


@pytest.fixture(scope="module")
def exact(tiny_model_dir: Path) -> ExactModel:
    return ExactModel(tiny_model_dir, TINY_PROMPT)


def reference_law(exact: ExactModel, *, horizon: int, particles: int, **options: Any) -> dict:
    """The reference Power-SMC's law over REFERENCE_RUNS runs, a block per token."""
    return smc_law(
        exact.next_logprobs,
        absorbing=frozenset({EOS_ID}),
        alpha=ALPHA,
        max_tokens=horizon,
        block_size=1,
        particles=particles,
        runs=REFERENCE_RUNS,
        **options,
    )


def served_law(
    service: ServiceProcess, *, particles: int, samples: int, **params: object
) -> dict[Hashable, float]:
    """The empirical law of ``samples`` served SMC answers to the tiny prompt, a block per token."""
    answers = draw(
        service,
        POWER,
        requests=1,
        n=samples,
        temperature=1 / ALPHA,
        block_size=1,
        power_method="smc",
        power_particles=particles,
        **params,
    )
    return empirical(answers)


def assert_follows(found: dict, law: dict, samples: int, what: str) -> None:
    """Served answers follow the reference law within a bound (the reference is itself a sample:
    its own bound widens the allowance)."""
    bound = tv_bound(law, samples) + tv_bound(law, REFERENCE_RUNS)
    distance = total_variation(found, law)
    logger.info("%s: TV to the reference %.4f (bound %.4f)", what, distance, bound)
    assert distance <= bound


def test_smc_law_matches_the_reference_and_falls_with_particles(
    tiny_service: ServiceProcess, exact: ExactModel
) -> None:
    target = exact.power_distribution(HORIZON, ALPHA)
    plain = total_variation(exact.tempered_distribution(HORIZON, 1 / ALPHA), target)
    served: dict[int, float] = {}
    reference: dict[int, float] = {}
    for particles, samples in SAMPLES.items():
        law = reference_law(exact, horizon=HORIZON, particles=particles)
        found = served_law(tiny_service, particles=particles, samples=samples)
        # The reference is itself a sample: its own bound widens the allowance.
        bound = tv_bound(law, samples) + tv_bound(law, REFERENCE_RUNS)
        served[particles] = total_variation(found, target)
        reference[particles] = total_variation(law, target)
        logger.info(
            "smc N=%d, %d samples: TV to the reference %.4f (bound %.4f); to p**%g %.4f "
            "(reference %.4f; plain at temperature 1/alpha %.4f)",
            particles,
            samples,
            total_variation(found, law),
            bound,
            ALPHA,
            served[particles],
            reference[particles],
            plain,
        )
        assert total_variation(found, law) <= bound
    # The algorithm's law approaches p**alpha as N grows (the reference has 40,000 runs: exact
    # enough to order these) ...
    assert reference[4] > reference[16] > reference[64]
    # ... and so do the served answers: at 64 particles far below plain low-temperature sampling.
    assert served[64] < served[4]
    assert served[64] < plain / 3


def test_chopthin_law_matches_the_reference(tiny_service: ServiceProcess, exact: ExactModel) -> None:
    """Chopthin resampling (power_resampling), where it happens in two runs of three: answers of up
    to 4 tokens, 8 particles, a block per token. Its law is within 0.006 of systematic's here, far
    inside the bound: this holds the served sampler to the algorithm, and
    tests/power/test_resampling.py holds chopthin to its properties."""
    horizon, particles, samples = 4, 8, 256
    law = reference_law(exact, horizon=horizon, particles=particles, resampling="chopthin")
    found = served_law(
        tiny_service,
        particles=particles,
        samples=samples,
        max_tokens=horizon,
        power_resampling="chopthin",
    )
    assert_follows(found, law, samples, f"smc chopthin N={particles}")


def test_kv_block_resampling_law_matches_the_reference(
    tiny_service: ServiceProcess, tiny_model_dir: Path
) -> None:
    """power_resample_at = kv_block on a 31-token prompt, with the engine's 32-token KV blocks and a
    block per token: a copy started at horizon 1 would prefill 32 tokens (its 32-token prompt is
    one block, never served whole from the cache), one at horizon 2 one token (33 tokens, a whole
    block cached). So SMC may resample at horizon 2 only, and there unless the weights are even;
    its law is the reference's run on that schedule."""
    prompt = (TINY_PROMPT * 16)[:31]
    config = PowerConfig(
        max_tokens=HORIZON, method="smc", block_size=1, resample_at="kv_block", kv_block=32
    )
    horizons = [h for h in range(1, HORIZON) if config.may_resample(len(prompt), h)]
    assert horizons == [2] and config.ess_threshold == 1.0
    particles, samples = 8, 384
    law = reference_law(
        ExactModel(tiny_model_dir, prompt),
        horizon=HORIZON,
        particles=particles,
        resample_horizons=horizons,
        threshold=config.ess_threshold,
    )
    found = served_law(
        tiny_service,
        particles=particles,
        samples=samples,
        prompt=prompt,
        power_resample_at="kv_block",
    )
    assert_follows(found, law, samples, f"smc kv_block N={particles}")


@pytest.fixture(scope="module")
def resubmitting_service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[ServiceProcess]:
    """The tiny model with SMC as it was before held particles: every growing particle a new
    engine request each block (POWERSERVE_POWER_HELD_PARTICLES=false, which make bench-particles
    measures held particles against)."""
    env = {"POWERSERVE_POWER_HELD_PARTICLES": "false"}
    args = [*tiny_engine_args(tiny_model_dir), "--max-n", "512"]
    service = start_service(tmp_path_factory, "tiny-resubmitting", args, env)
    yield service
    service.stop()


def test_resubmitted_particles_follow_the_same_law(
    resubmitting_service: ServiceProcess, exact: ExactModel
) -> None:
    """Re-submitting the particles every block changes what they cost, not what they sample: the
    reference law at N = 4, a block per token."""
    particles, samples = 4, 384
    law = reference_law(exact, horizon=HORIZON, particles=particles)
    found = served_law(resubmitting_service, particles=particles, samples=samples)
    assert_follows(found, law, samples, f"smc re-submitted N={particles}")


def test_report_counts_particles_and_resampling(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(
        model=POWER,
        prompt="a b",
        max_tokens=6,
        n=3,
        seed=5,
        extra_body={"power_method": "smc", "power_particles": 8, "block_size": 1},
    )
    report = result.model_extra["power"]
    assert report["method"] == "smc" and report["particles"] == 8
    assert report["resampling"] == "systematic" and report["resample_at"] == "block"
    assert "proposals" not in report and "mcmc_steps" not in report
    # Ended particles cost nothing more: at most the N requests of max_tokens per choice, and the
    # copies each resampling point starts (their run-ahead past a horizon is the only waste).
    worst = 8 * 6 + 7 * sum(6 - h for h in range(1, 6))
    assert result.usage.completion_tokens <= report["tokens_generated"] <= 3 * worst
    assert report["resamples"] >= 1  # alpha 4 over 6 tokens: the weights degenerate
    assert 1 <= report["min_ess"] < 8 * 0.5
    # Resampling only where a copy's prompt ends just past a whole 32-token KV block: none of the
    # 2 + 1..5 tokens of this prompt's horizons does, so the weights are never reset.
    aligned = tiny_client.completions.create(
        model=POWER,
        prompt="a b",
        max_tokens=6,
        seed=5,
        extra_body={
            "power_method": "smc",
            "power_particles": 8,
            "block_size": 1,
            "power_resample_at": "kv_block",
        },
    ).model_extra["power"]
    assert (aligned["resample_at"], aligned["resamples"]) == ("kv_block", 0)


def test_choices_are_independent_runs(tiny_client: openai.OpenAI) -> None:
    """n > 1 runs one particle system per choice, so choices differ, not n copies of one draw."""
    result = tiny_client.completions.create(
        model=POWER,
        prompt="a b",
        max_tokens=8,
        n=12,
        temperature=1.0,  # alpha 1: many likely answers
        seed=11,
        extra_body={"power_method": "smc", "power_particles": 4, "block_size": 2},
    )
    assert len({c.text for c in result.choices}) > 1


def test_stream_sends_the_shared_prefix_as_it_coalesces(tiny_client: openai.OpenAI) -> None:
    # With 2 particles at alpha 4, resampling often leaves both on one ancestor: its prefix is
    # final and goes out before the answer ends.
    early = []
    for seed in range(6):
        chunks = list(
            tiny_client.completions.create(
                model=POWER,
                prompt="a b",
                max_tokens=12,
                seed=seed,
                stream=True,
                extra_body={"power_method": "smc", "power_particles": 2, "block_size": 1},
            )
        )
        pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
        whole = tiny_client.completions.create(
            model=POWER,
            prompt="a b",
            max_tokens=12,
            seed=seed,
            extra_body={
                "power_method": "smc",
                "power_particles": 2,
                "block_size": 1,
                "cache": {"no-cache": True, "no-store": True},
            },
        )
        assert "".join(pieces) == whole.choices[0].text  # the same seeded answer, streamed
        early.append(len(pieces))
    assert max(early) > 1, early


def test_maximum_likelihood_limit_is_mh_only(tiny_service: ServiceProcess) -> None:
    url = f"{tiny_service.base_url}/completions"
    body = {"model": POWER, "prompt": "a", "max_tokens": 2, "temperature": 0}
    assert httpx.post(url, json=body, timeout=30).json()["power"]["method"] == "mh"
    response = httpx.post(url, json=body | {"power_method": "smc"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "temperature"


def test_many_seeded_particles_with_long_prompts_keep_the_engine_alive(
    tiny_service: ServiceProcess,
) -> None:
    """Hundreds of seeded engine requests whose prompts overflow one engine step: vLLM's CPU build
    used to kill its engine on the split prefill of a seeded request (engines.local.
    platform_arguments turns splitting off there)."""
    prompt = [0, 1, 2] * 19  # 57 tokens: 512 of them cannot be prefilled in one step
    body = {
        "model": POWER,
        "prompt": prompt,
        "max_tokens": 3,
        "n": 64,
        "seed": 7,
        "power_method": "smc",
        "power_particles": 8,
        "block_size": 1,
        "cache": {"no-cache": True, "no-store": True},
    }
    response = httpx.post(f"{tiny_service.base_url}/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 64
    assert httpx.get(f"{tiny_service.url}/health", timeout=10).status_code == 200
