"""The response cache against a real redis-server: what is cached, opting in and out, stream replay,
single-flight, and Redis going away mid-test."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import pytest
import redis

from loadtests.harness import RedisProcess, ServiceProcess
from tests.conftest import TINY_MODEL_NAME

POWER = f"{TINY_MODEL_NAME}-power"
_seeds = itertools.count(10_000)


def fresh_seed() -> int:
    """A seed no other test used: its first request is a miss."""
    return next(_seeds)


def post(service: ServiceProcess, body: dict) -> httpx.Response:
    response = httpx.post(f"{service.base_url}/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response


def body(**fields: object) -> dict:
    return {"model": TINY_MODEL_NAME, "prompt": "a b", "max_tokens": 3, "n": 2} | fields


def test_seeded_request_is_served_from_redis_on_repeat(
    tiny_service: ServiceProcess, redis_server
) -> None:
    request = body(seed=fresh_seed())
    first = post(tiny_service, request)
    began = time.monotonic()
    second = post(tiny_service, request)
    hit_seconds = time.monotonic() - began
    assert first.headers["x-powerserve-cache"] == "miss"
    assert second.headers["x-powerserve-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    assert hit_seconds < 0.5
    keys = redis.Redis.from_url(redis_server.url).keys("powerserve:v2:*")
    assert keys and redis.Redis.from_url(redis_server.url).ttl(keys[0]) > 0


def test_fields_that_do_not_change_the_answer_share_the_entry(tiny_service: ServiceProcess) -> None:
    request = body(seed=fresh_seed())
    post(tiny_service, request)
    again = post(tiny_service, request | {"user": "someone-else", "stream_options": None})
    assert again.headers["x-powerserve-cache"] == "hit"
    other = post(tiny_service, request | {"max_tokens": 2})
    assert other.headers["x-powerserve-cache"] == "miss"


def test_unseeded_sampling_bypasses_the_cache(tiny_service: ServiceProcess) -> None:
    responses = [post(tiny_service, body()) for _ in range(2)]
    assert [r.headers["x-powerserve-cache"] for r in responses] == ["bypass", "bypass"]


def test_greedy_requests_are_cached_but_greedy_power_is_not(tiny_service: ServiceProcess) -> None:
    request = body(temperature=0, max_tokens=2, n=1, prompt="c b a")
    assert [post(tiny_service, request).headers["x-powerserve-cache"] for _ in range(2)] == [
        "miss",
        "hit",
    ]
    # temperature 0 on the power route is a search with random proposals: not reproducible.
    power = body(model=POWER, temperature=0, mcmc_steps=2, n=1)
    assert post(tiny_service, power).headers["x-powerserve-cache"] == "bypass"


def test_cache_object_opts_in_and_out(tiny_service: ServiceProcess) -> None:
    # Opting in caches an unseeded request.
    opt_in = body(prompt="b b", cache={"ttl": 60})
    first, second = post(tiny_service, opt_in), post(tiny_service, opt_in)
    assert (first.headers["x-powerserve-cache"], second.headers["x-powerserve-cache"]) == ("miss", "hit")
    assert first.json()["choices"] == second.json()["choices"]

    # no-store: computed, not kept.
    request = body(seed=fresh_seed())
    post(tiny_service, request | {"cache": {"no-store": True}})
    assert post(tiny_service, request).headers["x-powerserve-cache"] == "miss"

    # no-cache: not read (computed again), but stored.
    assert (
        post(tiny_service, request | {"cache": {"no-cache": True}}).headers["x-powerserve-cache"]
        == "miss"
    )
    assert post(tiny_service, request).headers["x-powerserve-cache"] == "hit"


def test_ttl_and_s_maxage_bound_an_entrys_age(tiny_service: ServiceProcess) -> None:
    request = body(seed=fresh_seed())
    post(tiny_service, request | {"cache": {"ttl": 1}})
    time.sleep(1.2)
    assert post(tiny_service, request).headers["x-powerserve-cache"] == "miss"  # expired
    time.sleep(1.2)
    young_only = request | {"cache": {"s-maxage": 1}}
    assert post(tiny_service, young_only).headers["x-powerserve-cache"] == "miss"  # too old for it
    assert post(tiny_service, young_only).headers["x-powerserve-cache"] == "hit"


def test_cached_answer_replays_as_a_proper_stream(tiny_service: ServiceProcess) -> None:
    request = body(seed=fresh_seed(), logprobs=1)
    whole = post(tiny_service, request).json()
    streamed = request | {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST", f"{tiny_service.base_url}/completions", json=streamed, timeout=60
    ) as response:
        assert response.headers["x-powerserve-cache"] == "hit"
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert [texts[0], texts[1]] == [c["text"] for c in whole["choices"]]
    assert [finishes[0], finishes[1]] == [c["finish_reason"] for c in whole["choices"]]
    assert chunks[-1]["usage"] == whole["usage"]


def test_identical_concurrent_power_requests_compute_once(tiny_service: ServiceProcess) -> None:
    request = body(model=POWER, seed=fresh_seed(), mcmc_steps=30, n=4)
    generated_before = tiny_service.metric("powerserve_tokens_total", route="power", kind="generated")

    async def ten_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=tiny_service.base_url, timeout=300) as client:
            return await asyncio.gather(*(client.post("/completions", json=request) for _ in range(10)))

    responses = asyncio.run(ten_at_once())
    assert all(r.status_code == 200 for r in responses)
    statuses = sorted(r.headers["x-powerserve-cache"] for r in responses)
    assert statuses == ["hit"] * 9 + ["miss"]
    answers = {tuple(c["text"] for c in r.json()["choices"]) for r in responses}
    assert len(answers) == 1
    one_run = responses[0].json()["power"]["tokens_generated"]
    generated = tiny_service.metric("powerserve_tokens_total", route="power", kind="generated")
    assert generated - generated_before == one_run  # one MCMC run, not ten


def test_requests_survive_redis_going_away_and_coming_back(
    tiny_service: ServiceProcess, redis_server: RedisProcess
) -> None:
    request = body(seed=fresh_seed())
    assert post(tiny_service, request).headers["x-powerserve-cache"] == "miss"
    errors_before = tiny_service.metric("powerserve_cache_errors_total", operation="get")
    redis_server.stop()
    try:
        began = time.monotonic()
        down = [post(tiny_service, request) for _ in range(3)]
        assert all(r.headers["x-powerserve-cache"] == "miss" for r in down)  # answered, uncached
        assert time.monotonic() - began < 10
        assert tiny_service.metric("powerserve_cache_errors_total", operation="get") >= errors_before + 3
        warnings = tiny_service.log_tail(400).count("response cache unavailable")
        assert warnings == 1  # once per interval, not once per request
    finally:
        redis_server.start()
    # Redis is back (empty): the client reconnects and caching resumes.
    deadline = time.monotonic() + 10
    statuses = []
    while time.monotonic() < deadline and statuses[-2:] != ["miss", "hit"]:
        statuses.append(post(tiny_service, request).headers["x-powerserve-cache"])
    assert statuses[-2:] == ["miss", "hit"]


@pytest.mark.parametrize("route", [TINY_MODEL_NAME, POWER])
def test_hits_and_misses_are_counted_by_route(tiny_service: ServiceProcess, route: str) -> None:
    kind = "power" if route == POWER else "plain"
    hits = tiny_service.metric("powerserve_cache_lookups_total", route=kind, result="hit")
    request = body(model=route, seed=fresh_seed()) | ({"mcmc_steps": 1} if route == POWER else {})
    post(tiny_service, request)
    post(tiny_service, request)
    assert tiny_service.metric("powerserve_cache_lookups_total", route=kind, result="hit") == hits + 1
