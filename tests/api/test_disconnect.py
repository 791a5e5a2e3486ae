"""A client that goes away takes its work with it: the engine requests behind it are aborted."""

from __future__ import annotations

import time

import httpx
import pytest

from loadtests.harness import ServiceProcess
from tests.conftest import TINY_MODEL_NAME


def engine_requests(service: ServiceProcess) -> float:
    text = service.http.get(f"{service.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("powerserve_engine_requests "):
            return float(line.split()[1])
    raise AssertionError("powerserve_engine_requests is missing from /metrics")


def wait_until_idle(service: ServiceProcess, timeout: float) -> float:
    """Seconds until the engine holds no request; fails after ``timeout``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if engine_requests(service) == 0:
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"the engine still holds requests {timeout} s after the client left")


def test_plain_stream_disconnect_aborts_the_engine_request(default_service: ServiceProcess) -> None:
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
        "max_tokens": 1500,  # about a minute and a half at this machine's speed
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{default_service.base_url}/chat/completions", json=body, timeout=60
    ) as r:
        lines = r.iter_lines()
        received = [next(lines) for _ in range(6)]
        # Events, their blank separators, and keep-alive comments while the first token is slow.
        assert all(line.startswith(("data: ", ":")) or line == "" for line in received), received
        assert any(line.startswith("data: ") for line in received)
        assert engine_requests(default_service) == 1
    # The connection is closed: the request must leave the engine at once, not after 1500 tokens.
    assert wait_until_idle(default_service, timeout=10) < 10


def test_non_streamed_disconnect_aborts_the_engine_request(default_service: ServiceProcess) -> None:
    body = {"model": "smollm2-135m-instruct", "prompt": "Once upon a time", "max_tokens": 1500}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{default_service.base_url}/completions", json=body, timeout=3)
    assert wait_until_idle(default_service, timeout=10) < 10


def decoded_tokens(service: ServiceProcess) -> float:
    """vLLM's count of tokens it has decoded: it grows with every proposal a chain makes."""
    return service.metric("vllm:generation_tokens_total")


def wait_for_decoding(service: ServiceProcess, since: float, timeout: float) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if decoded_tokens(service) > since:
            return
        time.sleep(0.1)
    raise AssertionError(f"the engine decoded nothing in {timeout} s of the request")


def test_power_stream_disconnect_stops_the_chains(tiny_service: ServiceProcess) -> None:
    body = {
        "model": f"{TINY_MODEL_NAME}-power",
        "prompt": "a b",
        "max_tokens": 3,
        "n": 4,
        "mcmc_steps": 2000,  # minutes of proposals
        "stream": True,
    }
    before = decoded_tokens(tiny_service)
    with httpx.stream("POST", f"{tiny_service.base_url}/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        # Chains are proposing; nothing is streamed until they end. A proposal of the tiny model
        # is over in milliseconds, so the gauge of requests in the engine may read 0 at any one
        # instant: the counter of decoded tokens is what shows the work going on.
        wait_for_decoding(tiny_service, since=before, timeout=20)
        proposing = decoded_tokens(tiny_service)
        time.sleep(1)
        assert decoded_tokens(tiny_service) > proposing  # still proposing a second later
    wait_until_idle(tiny_service, timeout=10)
    stopped = decoded_tokens(tiny_service)
    time.sleep(2)
    assert decoded_tokens(tiny_service) == stopped  # and no chain goes on proposing
