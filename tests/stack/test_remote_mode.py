"""Remote mode: the gateway drives two real `powerserve worker` processes (stock vLLM OpenAI servers
on the tiny model) and serves every route from them, exactly; chains stick to a worker; a worker that
stalls or dies loses no request; with none left the gateway answers 503 at once.

The tests run in file order: the last ones stop the workers (tests/stack/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx

from loadtests.harness import PrometheusProcess
from loadtests.stats import empirical, total_variation, tv_bound
from loadtests.tiny_model import ExactModel
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT
from tests.power.test_exactness import ALPHA, BLOCK, HORIZON, draw, sampler_law
from tests.stack.conftest import Stack

POWER = f"{TINY_MODEL_NAME}-power"


def completion(stack: Stack, **body: object) -> httpx.Response:
    request = {"model": TINY_MODEL_NAME, "prompt": "a b", "max_tokens": 3} | body
    return httpx.post(f"{stack.gateway.base_url}/completions", json=request, timeout=300)


def test_every_route_is_served_by_the_workers(stack: Stack) -> None:
    models = httpx.get(f"{stack.gateway.base_url}/models", timeout=30).json()
    # The three routes first; a fine-tuning job's model (test_remote_fine_tuning.py) may follow.
    ids = [m["id"] for m in models["data"]]
    assert ids[:3] == [TINY_MODEL_NAME, POWER, f"{TINY_MODEL_NAME}-distilled"]
    assert all(i.startswith("ft:") for i in ids[3:])
    before = sum(stack.requests_by_worker())
    plain = completion(stack, n=4, logprobs=2)
    assert plain.status_code == 200, plain.text
    assert all(len(c["logprobs"]["top_logprobs"][0]) == 2 for c in plain.json()["choices"])
    power = completion(stack, model=POWER, mcmc_steps=3, n=2)
    assert power.status_code == 200 and power.json()["power"]["proposals"] == 2 * 3 * 3
    distilled = completion(stack, model=f"{TINY_MODEL_NAME}-distilled")
    assert distilled.status_code == 200 and distilled.json()["self_reward"]["sum_logprob"] < 0
    with httpx.stream(
        "POST", f"{stack.gateway.base_url}/completions",
        json={"model": TINY_MODEL_NAME, "prompt": "a", "max_tokens": 4, "stream": True}, timeout=60,
    ) as streamed:  # fmt: skip
        assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
    assert sum(stack.requests_by_worker()) > before  # it went through the workers


def test_power_sampling_stays_exact_in_remote_mode(stack: Stack, tiny_model_dir: Path) -> None:
    """The sampler's output over HTTP workers follows its exact law. Fewer samples and steps than the
    in-process test (tests/power/test_exactness.py): every proposal is an HTTP request here, and this
    checks the transport of token ids and log-probs, not the algorithm again."""
    exact = ExactModel(tiny_model_dir, TINY_PROMPT)
    steps = 10
    law = sampler_law(exact, steps)
    samples = draw(stack.gateway, POWER, requests=2, n=128, block_size=BLOCK, mcmc_steps=steps)
    found = empirical(samples)
    assert total_variation(found, law) <= tv_bound(law, len(samples))
    # And the law is p**alpha's, not plain sampling at temperature 1/alpha: far apart at these
    # settings (0.10 against 0.46), farther than the samples can stray from it.
    target = exact.power_distribution(HORIZON, ALPHA)
    tempered = exact.tempered_distribution(HORIZON, 1 / ALPHA)
    assert total_variation(found, target) < total_variation(tempered, target)


def test_all_steps_of_a_chain_land_on_one_worker(stack: Stack) -> None:
    for _ in range(3):
        before = stack.requests_by_worker()
        result = completion(stack, model=POWER, n=1, mcmc_steps=6, block_size=1, seed=None)
        assert result.status_code == 200
        proposals = result.json()["power"]["proposals"]
        delta = [after - was for after, was in zip(stack.requests_by_worker(), before, strict=True)]
        assert sorted(delta)[0] == 0  # the other worker saw none of this chain
        assert proposals < max(delta) <= proposals + 3  # every proposal, plus up to 3 growth steps


def test_smc_particles_of_one_answer_land_on_one_worker(stack: Stack) -> None:
    """Power-SMC over the workers: every particle of an answer on one worker (a resampled particle
    continues from its ancestor's prefix, which that worker's cache holds), the law intact."""
    for _ in range(2):
        before = stack.requests_by_worker()
        result = completion(
            stack, model=POWER, power_method="smc", power_particles=6, block_size=1, seed=None
        )
        assert result.status_code == 200, result.text
        assert result.json()["power"]["method"] == "smc"
        delta = [after - was for after, was in zip(stack.requests_by_worker(), before, strict=True)]
        assert sorted(delta)[0] == 0 and 0 < max(delta) <= 6 * 3  # one request per particle per block


def test_new_chains_spread_over_the_workers(stack: Stack) -> None:
    before = stack.requests_by_worker()
    assert completion(stack, model=POWER, n=8, mcmc_steps=10, block_size=1).status_code == 200
    delta = [after - was for after, was in zip(stack.requests_by_worker(), before, strict=True)]
    assert min(delta) > 0


def load(stack: Stack, seconds_before_fault: float, fault) -> list[httpx.Response]:
    """Run a burst of plain, power and streamed requests, applying ``fault`` while they are in flight."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.gateway.base_url, timeout=300) as client:
            bodies = [
                {
                    "model": POWER,
                    "prompt": "a b",
                    "max_tokens": 3,
                    "n": 4,
                    "mcmc_steps": 60,
                    "block_size": 1,
                },
                {"model": TINY_MODEL_NAME, "prompt": "a b", "max_tokens": 20, "n": 8},
                {"model": TINY_MODEL_NAME, "prompt": "a", "max_tokens": 20, "stream": True},
            ] * 4
            requests = [asyncio.create_task(client.post("/completions", json=b)) for b in bodies]
            await asyncio.sleep(seconds_before_fault)
            fault()
            return await asyncio.gather(*requests)

    return asyncio.run(burst())


DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "powerserve.json"


def test_every_dashboard_query_returns_data(stack: Stack, tmp_path: Path) -> None:
    """A real Prometheus scrapes the gateway and the workers, as deploy/prometheus does; after traffic
    on every route, every panel of the Grafana dashboard has data."""
    jobs = {"powerserve-gateway": [stack.gateway.url], "vllm-workers": [w.url for w in stack.workers]}
    prometheus = PrometheusProcess(jobs, tmp_path / "prometheus").start()
    try:
        time.sleep(3)  # a first scrape before the traffic: rates need two samples
        for model in (TINY_MODEL_NAME, POWER, f"{TINY_MODEL_NAME}-distilled"):
            for _ in range(2):  # the second of two seeded requests is a cache hit
                extra = {"mcmc_steps": 3} if model == POWER else {}
                assert completion(stack, model=model, seed=7, n=2, **extra).status_code == 200
            with httpx.stream(
                "POST", f"{stack.gateway.base_url}/completions",
                json={"model": model, "prompt": "a b", "max_tokens": 3, "stream": True}, timeout=120,
            ) as streamed:  # fmt: skip
                assert streamed.status_code == 200
                streamed.read()
        time.sleep(4)  # two more scrapes
        panels = json.loads(DASHBOARD.read_text())["panels"]
        # Each variable at "All", as Grafana sends it (allValue ".*").
        queries = [
            (p["title"], t["expr"].replace("$instance", ".*").replace("$model", ".*"))
            for p in panels
            for t in p.get("targets", [])
        ]
        empty = [(title, expr) for title, expr in queries if not prometheus.query(expr)]
        assert not empty, f"{len(empty)} of {len(queries)} dashboard queries returned no data: {empty}"
    finally:
        prometheus.stop()


def test_a_stalled_worker_loses_no_request_and_comes_back(stack: Stack) -> None:
    stalled = stack.workers[0]
    group = os.getpgid(stalled.process.pid)
    try:
        responses = load(stack, 1.0, lambda: os.killpg(group, signal.SIGSTOP))
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert stack.gateway.metric("powerserve_worker_up", worker="0") == 0
    finally:
        os.killpg(group, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while stack.gateway.metric("powerserve_worker_up", worker="0") != 1:
        assert time.monotonic() < deadline, "the resumed worker was not taken back"
        time.sleep(0.5)


def test_a_killed_worker_loses_no_request(stack: Stack) -> None:
    victim = stack.workers[0]
    responses = load(stack, 1.0, lambda: os.killpg(os.getpgid(victim.process.pid), signal.SIGKILL))
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert stack.gateway.metric("powerserve_worker_up", worker="0") == 0
    assert stack.gateway.metric("powerserve_worker_failures_total", worker="0") >= 1


def test_no_healthy_worker_is_a_prompt_503(stack: Stack) -> None:
    last = stack.workers[1]
    os.killpg(os.getpgid(last.process.pid), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while httpx.get(f"{stack.gateway.url}/health", timeout=10).status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    began = time.monotonic()
    response = completion(stack, model=POWER, mcmc_steps=2)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert set(response.json()["error"]) == {"message", "type", "param", "code", "request_id"}
    assert time.monotonic() - began < 5
