"""The power route through the OpenAI API: parameters, the `power` report, streaming, refusals."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import TINY_MODEL_NAME

POWER = f"{TINY_MODEL_NAME}-power"


def power_completion(client: openai.OpenAI, **kwargs: object):
    params = {"model": POWER, "prompt": "a b", "max_tokens": 4} | kwargs
    extra = {
        key: params.pop(key) for key in list(params) if key.startswith(("power_", "mcmc_", "block_"))
    }
    if "power_cache" in extra:
        extra["cache"] = extra.pop("power_cache")
    return client.completions.create(**params, extra_body=extra)


def test_report_accounts_for_every_proposal(tiny_client: openai.OpenAI) -> None:
    result = power_completion(tiny_client, n=3, mcmc_steps=5, block_size=2, logprobs=0, seed=1)
    report = result.model_extra["power"]
    assert report["alpha"] == 4.0  # temperature defaults to 0.25
    assert report["mcmc_steps"] == 5 and report["block_size"] == 2
    assert report["proposals"] == 3 * 2 * 5  # n chains x 2 blocks x 5 steps
    assert 0 <= report["accepted"] <= report["proposals"]
    assert report["acceptance_rate"] == pytest.approx(report["accepted"] / report["proposals"])
    returned = result.usage.completion_tokens
    assert report["tokens_generated"] >= returned + report["proposals"]  # every proposal makes >= 1
    assert report["cost_multiplier"] == pytest.approx(report["tokens_generated"] / returned)
    assert report["normaliser_error_bound"] == 0.0  # the top-k covers the 4-token vocabulary
    logprob_sum = sum(lp for c in result.choices for lp in c.logprobs.token_logprobs)
    assert report["self_reward"]["sum_logprob"] == pytest.approx(logprob_sum / 3)
    for choice in result.choices:
        assert choice.model_extra["self_reward"]["sum_logprob"] == pytest.approx(
            sum(choice.logprobs.token_logprobs)
        )


def test_plain_route_reports_self_reward_but_no_power(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(model=TINY_MODEL_NAME, prompt="a b", max_tokens=3)
    assert "power" not in result.model_extra
    assert result.model_extra["self_reward"]["mean_logprob"] <= 0


def test_chat_endpoint_serves_the_power_route(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.chat.completions.create(
        model=POWER,
        messages=[{"role": "user", "content": "a b"}],
        max_tokens=3,
        extra_body={"mcmc_steps": 3},
    )
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.model_extra["power"]["proposals"] == 3 * 3  # block size max(1, 3 // 16) = 1


@pytest.mark.parametrize(
    ("params", "alpha"),
    [
        ({"temperature": 0.5}, 2.0),
        ({"temperature": 1.0}, 1.0),
        ({"temperature": 0}, "inf"),
        ({"power_alpha": 3.0}, 3.0),
    ],
)
def test_temperature_is_one_over_alpha(tiny_client: openai.OpenAI, params: dict, alpha: object) -> None:
    result = power_completion(tiny_client, mcmc_steps=2, **params)
    assert result.model_extra["power"]["alpha"] == alpha


def test_alpha_one_accepts_every_proposal_of_equal_length(tiny_client: openai.OpenAI) -> None:
    # At alpha 1 target and proposal coincide: the ratio is only the cut-point correction.
    result = power_completion(
        tiny_client, temperature=1.0, mcmc_steps=10, n=8, max_tokens=3, block_size=3
    )
    assert result.model_extra["power"]["acceptance_rate"] > 0.5


def test_maximum_likelihood_limit_only_climbs(tiny_client: openai.OpenAI) -> None:
    hill = power_completion(
        tiny_client, temperature=0, mcmc_steps=30, n=8, max_tokens=3, logprobs=0, seed=3
    )
    plain = tiny_client.completions.create(
        model=TINY_MODEL_NAME, prompt="a b", max_tokens=3, n=8, seed=3
    )
    best = [c.model_extra["self_reward"]["sum_logprob"] for c in hill.choices]
    sampled = [c.model_extra["self_reward"]["sum_logprob"] for c in plain.choices]
    assert sum(best) / 8 > sum(sampled) / 8


def test_same_seed_same_answers(tiny_client: openai.OpenAI) -> None:
    uncached = {"no-cache": True, "no-store": True}  # the engine's reproducibility, not the cache's
    first = power_completion(tiny_client, n=4, mcmc_steps=4, seed=123, power_cache=uncached)
    again = power_completion(tiny_client, n=4, mcmc_steps=4, seed=123, power_cache=uncached)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.model_extra["power"]["accepted"] == again.model_extra["power"]["accepted"]


def test_stream_sends_each_answer_when_its_chain_ends(tiny_client: openai.OpenAI) -> None:
    chunks = list(
        tiny_client.completions.create(
            model=POWER,
            prompt="a b",
            max_tokens=6,
            logprobs=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mcmc_steps": 3, "block_size": 2},
        )
    )
    with_tokens = [c for c in chunks if c.choices and c.choices[0].logprobs is not None]
    # The whole answer at once (every token of it, EOS included): nothing is final earlier.
    assert len(with_tokens) == 1
    assert len(with_tokens[0].choices[0].logprobs.tokens) == chunks[-1].usage.completion_tokens
    last = chunks[-2].choices[0]
    assert last.finish_reason in ("stop", "length")
    assert last.model_extra["power"]["proposals"] == 3 * 3


def test_stream_lag_streams_frozen_blocks_early(tiny_client: openai.OpenAI) -> None:
    # Sampling at alpha 1 makes long answers likely (EOS has chance ~1/4 per token).
    texts = []
    for seed in range(6):
        chunks = list(
            tiny_client.completions.create(
                model=POWER,
                prompt="a b",
                max_tokens=12,
                temperature=1.0,
                seed=seed,
                stream=True,
                extra_body={"mcmc_steps": 2, "block_size": 2, "power_stream_lag": 1},
            )
        )
        texts.append([c.choices[0].text for c in chunks if c.choices and c.choices[0].text])
    assert any(len(pieces) > 1 for pieces in texts), texts


def test_stream_with_usage_carries_the_power_report(tiny_client: openai.OpenAI) -> None:
    chunks = list(
        tiny_client.chat.completions.create(
            model=POWER,
            messages=[{"role": "user", "content": "a"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mcmc_steps": 2},
        )
    )
    final = chunks[-1]
    assert final.usage is not None and final.choices == []
    assert final.model_extra["power"]["proposals"] == 2 * 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"power_alpha": 0.5}, "power_alpha"),
        ({"mcmc_steps": -1}, "mcmc_steps"),
        ({"block_size": 0}, "block_size"),
        ({"frequency_penalty": 1.0}, "frequency_penalty"),
        ({"power_budget": 0.5}, "power_budget"),
        ({"power_budget": "inf"}, "power_budget"),
        ({"power_method": "smc", "power_particles": 8, "power_budget": 4}, "power_budget"),
        ({"power_method": "mh", "mcmc_steps": 10, "power_budget": 2}, "power_budget"),
        ({"power_latency_target": 0}, "power_latency_target"),
        ({"power_latency_target": 3601}, "power_latency_target"),
        ({"power_latency_target": "soon"}, "power_latency_target"),
        (
            {"power_method": "smc", "power_particles": 4, "power_latency_target": 5},
            "power_latency_target",
        ),
        ({"power_resampling": "multinomial"}, "power_resampling"),
        ({"power_method": "mh", "power_resampling": "chopthin"}, "power_resampling"),
        ({"power_resample_at": "token"}, "power_resample_at"),
        ({"power_resample_at": 32}, "power_resample_at"),
        ({"power_method": "mh", "power_resample_at": "kv_block"}, "power_resample_at"),
    ],
)
def test_invalid_power_parameters_are_400(tiny_service, body: dict, param: str) -> None:
    request = {"model": POWER, "prompt": "a", "max_tokens": 2} | body
    response = httpx.post(f"{tiny_service.base_url}/completions", json=request, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_power_parameters_on_the_plain_route_are_400(tiny_service) -> None:
    request = {"model": TINY_MODEL_NAME, "prompt": "a", "max_tokens": 2, "mcmc_steps": 3}
    response = httpx.post(f"{tiny_service.base_url}/completions", json=request, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "mcmc_steps"


def test_runaway_request_is_refused_before_it_starts(tiny_service) -> None:
    generated = {"route": "power", "kind": "generated"}
    before = tiny_service.metric("powerserve_tokens_total", **generated)
    request = {
        "model": POWER,
        "prompt": "a",
        "max_tokens": 60,
        "n": 512,
        "mcmc_steps": 1000,
        "block_size": 1,
    }
    response = httpx.post(f"{tiny_service.base_url}/completions", json=request, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "token_budget_exceeded"
    assert "200000" in error["message"]
    # Refused before any work: at once, and nothing reached the engine.
    assert response.elapsed.total_seconds() < 5
    assert tiny_service.metric("powerserve_tokens_total", **generated) == before


def test_particles_follow_the_engines_load_and_the_budget(tiny_service) -> None:
    """An idle engine gives an SMC request that sets no N what its batch has room for (16 less the
    requests in flight, within [4, 8]); power_budget caps it; the report and the metrics say which
    N ran and what chose it."""
    client = openai.OpenAI(base_url=tiny_service.base_url, api_key="unused", max_retries=0)
    budget_before = tiny_service.metric("powerserve_power_smc_particles_count", chosen_by="budget")
    idle = power_completion(client, power_method="smc").model_extra["power"]
    assert idle["chosen_by"] == "load" and "budget" not in idle
    assert idle["particles"] == min(8, max(4, 16 - idle["engine_load"]))
    budgeted = power_completion(client, power_method="smc", power_budget=2.5).model_extra["power"]
    assert (budgeted["particles"], budgeted["chosen_by"], budgeted["budget"]) == (2, "budget", 2.5)
    assert budgeted["cost_multiplier"] <= 2.5 * 1.5  # a dropped particle's run-ahead at most
    seeded = power_completion(client, power_method="smc", seed=3).model_extra["power"]
    assert (seeded["particles"], seeded["chosen_by"]) == (4, "seed")
    mh = power_completion(client, power_budget=3).model_extra["power"]  # this service's default: mh
    assert mh["method"] == "mh" and mh["chosen_by"] == "budget" and mh["mcmc_steps"] >= 0
    assert mh["cost_multiplier"] <= 3
    after = tiny_service.metric("powerserve_power_smc_particles_count", chosen_by="budget")
    assert after == budget_before + 1


def test_particles_chosen_by_the_load_are_let_go_when_it_grows(tiny_service) -> None:
    """The load that chose N can grow while the answer runs: here three choices of one request,
    each given 8 particles on an idle engine (16 less 0 in flight), find 16 more sequences in the
    batch at their first block's end and keep 4 (16 less 16, at least power_particles). A seeded
    request's N stays fixed, since its answer must not depend on the load; the metric counts the
    particles let go."""
    client = openai.OpenAI(base_url=tiny_service.base_url, api_key="unused", max_retries=0)
    shed_before = tiny_service.metric("powerserve_power_smc_particles_shed_total")
    params = {"power_method": "smc", "n": 3, "block_size": 1, "max_tokens": 6}
    report = power_completion(client, **params).model_extra["power"]
    assert (report["particles"], report["chosen_by"], report["engine_load"]) == (8, "load", 0)
    assert report["final_particles"] == 4
    shed = tiny_service.metric("powerserve_power_smc_particles_shed_total") - shed_before
    assert 4 <= shed <= 3 * 4
    seeded = power_completion(client, seed=5, **params).model_extra["power"]
    assert (seeded["particles"], seeded["final_particles"], seeded["chosen_by"]) == (4, 4, "seed")
    assert tiny_service.metric("powerserve_power_smc_particles_shed_total") == shed_before + shed


def test_a_latency_target_sizes_the_answer_from_what_answers_took(tiny_service) -> None:
    """After answers have run, a target of a sliver of what one particle took gets one particle
    (plain sampling at 1/alpha), a generous one the route's own choice; both report what the route
    expected, and the metrics count the fitted one."""
    client = openai.OpenAI(base_url=tiny_service.base_url, api_key="unused", max_retries=0)
    fitted_before = tiny_service.metric(
        "powerserve_power_smc_particles_count", chosen_by="latency_target"
    )
    for _ in range(2):  # plain and SMC answers for the estimates to learn from
        client.completions.create(model=TINY_MODEL_NAME, prompt="a", max_tokens=4)
        power_completion(client, power_method="smc", power_particles=4)
    tight = power_completion(client, power_method="smc", power_latency_target=1e-6)
    report = tight.model_extra["power"]
    assert (report["particles"], report["chosen_by"]) == (1, "latency_target")
    assert report["latency_target"] == 1e-6 and report["predicted_latency_s"] > 1e-6
    loose = power_completion(client, power_method="smc", power_latency_target=3600)
    report = loose.model_extra["power"]
    assert report["particles"] >= 4 and report["chosen_by"] in ("load", "default")
    assert 0 < report["predicted_latency_s"] <= 3600
    after = tiny_service.metric("powerserve_power_smc_particles_count", chosen_by="latency_target")
    assert after == fitted_before + 1
