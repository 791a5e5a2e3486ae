"""Keys, per-key limits, admission control and the body cap on the real service (the tiny model, a
redis-server of its own, the official openai client)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from loadtests.harness import RedisProcess, ServiceProcess
from service.limits import hash_key
from tests.conftest import TINY_MODEL_NAME, start_service, tiny_engine_args

POWER = f"{TINY_MODEL_NAME}-power"
TPM = 1_000_000
OPEN_KEYS = "alice=sk-alice,bob=sk-bob,carol=sk-carol"


@pytest.fixture(scope="module")
def limits_redis() -> Iterator[RedisProcess]:
    """Its own Redis, which a test kills and restarts."""
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, limits_redis: RedisProcess
) -> Iterator[ServiceProcess]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys_file.write_text(f'[keys.dave]\nsha256 = "{hash_key("sk-dave")}"\nrpm = 2\n')
    env = {
        "REDIS_URL": limits_redis.url,
        "POWERSERVE_API_KEYS": OPEN_KEYS,
        "POWERSERVE_API_KEYS_FILE": str(keys_file),
        "POWERSERVE_RATE_LIMIT_RPM": "10000",
        "POWERSERVE_RATE_LIMIT_TPM": str(TPM),
        "POWERSERVE_MAX_INFLIGHT_REQUESTS": "2",
    }
    args = [*tiny_engine_args(tiny_model_dir), "--power-method", "mh"]
    service = start_service(tmp_path_factory, "keyed", args, env=env)
    yield service
    service.stop()


def client(service: ServiceProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.base_url, api_key=key, max_retries=0, timeout=120)


def plain(**fields: object) -> dict:
    return {"model": TINY_MODEL_NAME, "prompt": "a b", "max_tokens": 2} | fields


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_wrong_or_missing_key_is_an_authentication_error(keyed_service: ServiceProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(keyed_service, "sk-alicf").completions.create(**plain())
    assert wrong.value.code == "invalid_api_key"
    missing = httpx.post(f"{keyed_service.base_url}/completions", json=plain(), timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{keyed_service.base_url}/models", timeout=30).status_code == 401
    # Probes and metrics stay open (POWERSERVE_METRICS_REQUIRE_KEY is off).
    for path in ("/health", "/live", "/metrics"):
        assert httpx.get(f"{keyed_service.url}{path}", timeout=30).status_code == 200
    assert client(keyed_service, "sk-alice").models.list().data
    assert keyed_service.metric("powerserve_rejections_total", reason="unauthenticated") >= 3


def test_a_key_over_its_limit_is_refused_while_other_keys_are_served(
    keyed_service: ServiceProcess,
) -> None:
    dave, alice = client(keyed_service, "sk-dave"), client(keyed_service, "sk-alice")
    for _ in range(2):  # dave's own limit (the keys file): 2 requests per minute
        raw = dave.completions.with_raw_response.create(**plain())
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as refused:
        dave.completions.create(**plain())
    assert refused.value.code == "rate_limit_exceeded"
    headers = refused.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # alice has the settings' limits and is served meanwhile, with OpenAI's headers.
    served = alice.completions.with_raw_response.create(**plain())
    assert served.headers["x-ratelimit-limit-requests"] == "10000"
    assert served.headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert served.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert keyed_service.metric("powerserve_rejections_total", reason="rate_limit_requests") >= 1


def test_a_power_request_is_charged_the_tokens_it_made_the_engine_generate(
    keyed_service: ServiceProcess,
) -> None:
    bob = client(keyed_service, "sk-bob")
    first = bob.completions.with_raw_response.create(**plain())
    before = int(first.headers["x-ratelimit-remaining-tokens"])
    power = bob.completions.with_raw_response.create(
        model=POWER, prompt="a b", max_tokens=3, extra_body={"mcmc_steps": 4}
    )
    report = power.http_response.json()["power"]
    after = int(power.headers["x-ratelimit-remaining-tokens"])
    # Charged what the engine generated (rejected proposals included), far more than it returned.
    assert before - after == report["tokens_generated"]
    assert report["tokens_generated"] > power.http_response.json()["usage"]["completion_tokens"]
    # A stream says its reservation up front: the worst case is held until the stream ends.
    with bob.completions.with_streaming_response.create(**plain(), stream=True) as stream:
        held = int(stream.headers["x-ratelimit-remaining-tokens"])
        list(stream.iter_lines())
    assert held <= after - 2
    time.sleep(0.5)
    settled = bob.completions.with_raw_response.create(**plain(max_tokens=1))
    assert int(settled.headers["x-ratelimit-remaining-tokens"]) >= after - 2 - 1


def test_a_body_over_the_cap_gets_413_before_it_is_parsed(keyed_service: ServiceProcess) -> None:
    big = "a " * 1_000_000  # 2 MB
    with pytest.raises(openai.APIStatusError) as refused:
        client(keyed_service, "sk-alice").completions.create(**plain(prompt=big))
    assert refused.value.status_code == 413
    assert refused.value.code == "request_too_large"

    # Without Content-Length (chunked), counted as it arrives.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"a " * 25_000
        yield b'"}'

    response = httpx.post(
        f"{keyed_service.base_url}/completions", content=chunks(), headers=auth("sk-alice"), timeout=30
    )
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code", "request_id"}
    assert keyed_service.metric("powerserve_rejections_total", reason="body_too_large") >= 2


def _power_stream(
    service: ServiceProcess,
    opened: threading.Event,
    stop: threading.Event,
    statuses: list[int],
    remaining: list[int],
) -> None:
    body = {"model": POWER, "prompt": "a b", "max_tokens": 3, "mcmc_steps": 2000, "stream": True}
    with service.http.stream(
        "POST", f"{service.base_url}/completions", json=body, headers=auth("sk-carol")
    ) as response:
        statuses.append(response.status_code)
        remaining.append(int(response.headers["x-ratelimit-remaining-tokens"]))
        opened.set()
        stop.wait(60)
    # leaving the block closes the connection: the client is gone


def test_admission_control_and_a_disconnect_frees_its_place_but_pays(
    keyed_service: ServiceProcess,
) -> None:
    carol = client(keyed_service, "sk-carol")
    baseline = int(
        carol.completions.with_raw_response.create(**plain(max_tokens=1)).headers[
            "x-ratelimit-remaining-tokens"
        ]
    )
    stop = threading.Event()
    streams: list[threading.Thread] = []
    statuses: list[int] = []
    remaining: list[int] = []
    try:
        for _ in range(2):  # the cap: 2 requests in flight
            opened = threading.Event()
            thread = threading.Thread(
                target=_power_stream, args=(keyed_service, opened, stop, statuses, remaining)
            )
            thread.start()
            streams.append(thread)
            assert opened.wait(60), "a power stream was not answered"
        assert statuses == [200, 200]
        began = time.monotonic()
        with pytest.raises(openai.InternalServerError) as refused:
            carol.completions.create(**plain())
        assert time.monotonic() - began < 2  # refused at once, not queued
        assert refused.value.status_code == 503
        assert refused.value.code == "server_overloaded"
        assert int(refused.value.response.headers["retry-after"]) >= 1
    finally:  # the streams leave even when an assertion failed, not to hold the next test's places
        stop.set()
        for thread in streams:
            thread.join(30)
    # The clients left: their places come back at once, but not their tokens: a power answer's
    # particles or chains run unseen, so a cut one is charged its reservation (else cutting each
    # request just before its end would dodge the token limit).
    deadline = time.monotonic() + 10
    while True:
        try:
            raw = carol.completions.with_raw_response.create(**plain(max_tokens=1))
            break
        except openai.InternalServerError:
            assert time.monotonic() < deadline, "the disconnected streams still hold their places"
            time.sleep(0.2)
    held = min(remaining)  # after both reservations
    assert held < baseline - 100
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) <= held
    assert keyed_service.metric("powerserve_rejections_total", reason="overloaded") >= 1


def test_a_request_its_client_cuts_short_is_charged_its_reservation(
    keyed_service: ServiceProcess,
) -> None:
    """Cutting a non-streamed power request before its end does not dodge the token limit: the
    engine may have generated all of it, so its whole reservation stays charged."""
    alice = client(keyed_service, "sk-alice")
    body = {"model": POWER, "prompt": "a b", "max_tokens": 3, "mcmc_steps": 2000}
    for _attempt in range(3):  # a window that resets in between is not a measurement
        first = alice.completions.with_raw_response.create(**plain(max_tokens=1))
        before = int(first.headers["x-ratelimit-remaining-tokens"])
        began = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            keyed_service.http.post(
                f"{keyed_service.base_url}/completions", json=body, headers=auth("sk-alice"), timeout=2
            )
        time.sleep(1)  # the gateway sees the client gone and settles
        after = alice.completions.with_raw_response.create(**plain(max_tokens=1))
        remaining = int(after.headers["x-ratelimit-remaining-tokens"])
        if remaining <= before and time.monotonic() - began < 50:
            assert before - remaining > 100  # the cut request's reservation, not refunded
            return
    pytest.fail("every attempt crossed a rate-limit window")


def test_redis_killed_under_load_loses_no_request_and_limits_recover(
    keyed_service: ServiceProcess, limits_redis: RedisProcess
) -> None:
    statuses: list[int] = []
    limited: list[bool] = []
    running = threading.Event()
    running.set()

    def load() -> None:
        while running.is_set():
            r = keyed_service.http.post(
                f"{keyed_service.base_url}/completions",
                json=plain(max_tokens=1),
                headers=auth("sk-alice"),
            )
            statuses.append(r.status_code)
            limited.append("x-ratelimit-remaining-requests" in r.headers)

    errors_before = keyed_service.metric("powerserve_rate_limit_errors_total", operation="reserve")
    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    limits_redis.process.kill()  # type: ignore[union-attr]
    limits_redis.process.wait()  # type: ignore[union-attr]
    time.sleep(3)
    limits_redis.start()  # same port, empty
    time.sleep(3)
    running.clear()
    for worker in workers:
        worker.join(60)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert not all(limited)  # some were admitted unlimited while Redis was away ...
    assert all(limited[-4:])  # ... and the limits hold again now that it is back
    after = keyed_service.metric("powerserve_rate_limit_errors_total", operation="reserve")
    assert after > errors_before
