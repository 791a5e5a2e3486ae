"""The per-key limits on their own, in memory and on a real redis-server: reserve the worst case,
give back the unused part, refuse over a limit, fail open while Redis is away and recover after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loadtests.harness import RedisProcess
from service.errors import RateLimitedError, ServerOverloadedError
from service.limits import Admission, KeyRing, RateLimiter, hash_key, reset_text
from service.metrics.registry import RATE_LIMIT_ERRORS


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest, own_redis: RedisProcess) -> str | None:
    return own_redis.url if request.param == "redis" else None


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_tokens_are_reserved_then_the_unused_part_is_given_back(redis_url: str | None) -> None:
    async def scenario() -> None:
        limiter = RateLimiter(redis_url)
        ident = f"key:refund-{time.time_ns()}"
        first = await limiter.reserve(ident, rpm=10, tpm=1000, tokens=300)
        assert first.quota.tokens is not None and first.quota.tokens.remaining == 700
        assert first.quota.requests is not None and first.quota.requests.remaining == 9
        # A second request sees the first one's whole reservation ...
        second = await limiter.reserve(ident, rpm=10, tpm=1000, tokens=600)
        assert second.quota.tokens is not None and second.quota.tokens.remaining == 100
        # ... and a third that does not fit is refused, without being counted.
        with pytest.raises(RateLimitedError) as refused:
            await limiter.reserve(ident, rpm=10, tpm=1000, tokens=200)
        assert refused.value.kind == "tokens" and 1 <= refused.value.retry_after <= 60
        assert refused.value.headers["x-ratelimit-remaining-tokens"] == "100"
        # The first used 50 of its 300: 250 come back.
        after = await limiter.settle(first, 50)
        assert after.tokens is not None and after.tokens.remaining == 350
        await limiter.settle(first, 50)  # settling twice gives back once
        fourth = await limiter.reserve(ident, rpm=10, tpm=1000, tokens=200)
        assert fourth.quota.tokens is not None and fourth.quota.tokens.remaining == 150
        await limiter.close()

    run(scenario())


def test_requests_per_minute(redis_url: str | None) -> None:
    async def scenario() -> None:
        limiter = RateLimiter(redis_url)
        ident = f"key:rpm-{time.time_ns()}"
        for _ in range(3):
            await limiter.reserve(ident, rpm=3, tpm=None, tokens=10)
        with pytest.raises(RateLimitedError) as refused:
            await limiter.reserve(ident, rpm=3, tpm=None, tokens=10)
        assert refused.value.kind == "requests"
        assert refused.value.headers["x-ratelimit-limit-requests"] == "3"
        assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
        # Another identity is not affected.
        await limiter.reserve(ident + "-other", rpm=3, tpm=None, tokens=10)
        await limiter.close()

    run(scenario())


def test_a_request_larger_than_the_limit_is_refused_outright() -> None:
    with pytest.raises(RateLimitedError, match="more than this key's limit"):
        run(RateLimiter().reserve("key:x", rpm=None, tpm=100, tokens=101))


def test_redis_away_fails_open_and_limits_return_with_it() -> None:
    redis = RedisProcess().start()

    async def scenario() -> None:
        limiter = RateLimiter(redis.url, log_interval_s=3600)
        ident = f"key:outage-{time.time_ns()}"
        await limiter.reserve(ident, rpm=1, tpm=None, tokens=1)
        with pytest.raises(RateLimitedError):
            await limiter.reserve(ident, rpm=1, tpm=None, tokens=1)
        errors = RATE_LIMIT_ERRORS.labels("reserve")._value.get()
        redis.stop()
        # Redis is gone: admitted, unlimited (no quota), counted.
        for _ in range(3):
            reservation = await limiter.reserve(ident, rpm=1, tpm=None, tokens=1)
            assert reservation.quota.requests is None
        assert RATE_LIMIT_ERRORS.labels("reserve")._value.get() > errors
        redis.start()  # same port, empty: limits start afresh
        await asyncio.sleep(1.1)  # the limiter tries the store again a second after a failure
        await limiter.reserve(ident, rpm=1, tpm=None, tokens=1)
        with pytest.raises(RateLimitedError):
            await limiter.reserve(ident, rpm=1, tpm=None, tokens=1)
        await limiter.close()

    try:
        run(scenario())
    finally:
        redis.stop()


def test_admission_caps_requests_and_reserved_tokens() -> None:
    admission = Admission(max_requests=2, max_tokens=100)
    admission.enter(500)  # alone: admitted however large
    with pytest.raises(ServerOverloadedError):
        admission.enter(1)  # over the token cap
    admission.leave(500)
    admission.enter(60)
    with pytest.raises(ServerOverloadedError):
        admission.enter(50)
    admission.enter(40)
    with pytest.raises(ServerOverloadedError):
        admission.enter(0)  # over the request cap
    admission.leave(60)
    admission.leave(40)
    assert (admission.requests, admission.tokens) == (0, 0)


def test_keys_from_the_environment_and_a_hashed_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[keys.dave]\nsha256 = "{hash_key("sk-dave")}"\nrpm = 2\ntpm = 0\n')
    ring = KeyRing.from_settings("alice=sk-alice, bob=sk-bob", keys_file)
    assert len(ring) == 3
    assert ring.authenticate("sk-alice").name == "alice"  # type: ignore[union-attr]
    dave = ring.authenticate("sk-dave")
    assert dave is not None and (dave.name, dave.rpm, dave.tpm) == ("dave", 2, 0)
    assert ring.authenticate("sk-alic") is None
    assert ring.authenticate("") is None
    assert not KeyRing.from_settings(None, None).enabled
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": {"eve": {"sha256": "sk-plain-key"}}}')
    with pytest.raises(ValueError, match="sha256"):
        KeyRing.from_settings(None, bad)


def test_keys_name_their_project_and_admin(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[keys.alice]\nsha256 = "{hash_key("sk-a")}"\nproject = "red"\n'
        f'[keys.ops]\nsha256 = "{hash_key("sk-o")}"\nadmin = true\n'
        f'[keys.bob]\nsha256 = "{hash_key("sk-b")}"\npower_budget = 3\npower_latency_target = 2.5\n'
    )
    ring = KeyRing.from_settings("carol=sk-c", keys_file)
    alice, ops, bob, carol = (ring.authenticate(k) for k in ("sk-a", "sk-o", "sk-b", "sk-c"))
    assert alice is not None and (alice.project, alice.admin) == ("red", False)
    assert ops is not None and (ops.project, ops.admin) == ("ops", True)
    assert bob is not None and bob.project == "bob"  # a key without a project is its own
    assert (bob.power_budget, alice.power_budget) == (3, None)
    assert (bob.power_latency_target, alice.power_latency_target) == (2.5, None)
    assert carol is not None and carol.project == "carol"
    assert ring.named("alice") == alice and ring.named("nobody") is None
    problems = [
        ('project = ""', "project"),
        ('admin = "yes"', "admin"),
        ("power_budget = 0.5", "power_budget"),
        ("power_budget = inf", "power_budget"),
        ("power_budget = true", "power_budget"),
        ("power_latency_target = 0", "power_latency_target"),
        ("power_latency_target = 3601", "power_latency_target"),
        ('power_latency_target = "10s"', "power_latency_target"),
    ]
    for entry, problem in problems:
        bad = tmp_path / "bad.toml"
        bad.write_text(f'[keys.eve]\nsha256 = "{hash_key("sk-e")}"\n{entry}\n')
        with pytest.raises(ValueError, match=problem):
            KeyRing.from_settings(None, bad)


def test_reset_text_follows_openai() -> None:
    assert [reset_text(s) for s in (0.02, 1.5, 59.0, 360)] == ["20ms", "1.5s", "59s", "6m0s"]


def test_a_refund_never_takes_a_counter_below_zero(
    redis_url: str | None, own_redis: RedisProcess
) -> None:
    """The counter was lost after the charge (evicted, or the store restarted): the refund finds
    nothing to give back from, instead of crediting the key."""

    async def scenario() -> None:
        limiter = RateLimiter(redis_url)
        ident = f"key:evicted-{time.time_ns()}"
        reservation = await limiter.reserve(ident, rpm=None, tpm=1000, tokens=400)
        if redis_url is None:
            await limiter.storage.reset()
        else:
            client = redis.Redis.from_url(own_redis.url)
            for key in client.scan_iter(f"*{ident}*"):
                client.delete(key)
            client.close()
        quota = await limiter.settle(reservation, 0)
        assert quota.tokens is not None and quota.tokens.remaining <= 1000
        # A full-size request still fits exactly, and not one token more.
        fresh = await limiter.reserve(ident, rpm=None, tpm=1000, tokens=1000)
        assert fresh.quota.tokens is not None and fresh.quota.tokens.remaining == 0
        with pytest.raises(RateLimitedError):
            await limiter.reserve(ident, rpm=None, tpm=1000, tokens=1)
        await limiter.close()

    run(scenario())


def test_counters_refuse_a_redis_that_evicts(own_redis: RedisProcess) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(RuntimeError, match="allkeys-lru"):
            run(RateLimiter(own_redis.url).check())
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    run(RateLimiter(own_redis.url).check())  # a Redis that keeps every key is fine
