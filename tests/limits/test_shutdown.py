"""SIGTERM drains: /health turns 503, new requests get 503 + Retry-After, the request in flight
finishes, then the process exits."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.harness import ServiceProcess
from tests.api.test_disconnect import engine_requests
from tests.conftest import TINY_MODEL_NAME, start_service, tiny_engine_args

DRAIN_S = 60


@pytest.fixture(scope="module")
def draining_service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[ServiceProcess]:
    env = {"POWERSERVE_DRAIN_TIMEOUT_S": str(DRAIN_S)}
    args = [*tiny_engine_args(tiny_model_dir), "--power-method", "mh"]
    service = start_service(tmp_path_factory, "draining", args, env=env)
    yield service
    service.stop()


def test_sigterm_drains_requests_in_flight_then_exits(draining_service: ServiceProcess) -> None:
    service = draining_service
    # Seeded, and four chains: an unseeded chain whose first token is EOS ends in milliseconds (CI
    # saw it end before the drain began, twice).
    slow = {
        "model": f"{TINY_MODEL_NAME}-power",
        "prompt": "a b",
        "max_tokens": 3,
        "n": 4,
        "mcmc_steps": 120,
        "seed": 11,
        "cache": {"no-cache": True, "no-store": True},
    }
    outcome: dict[str, object] = {}

    def slow_request() -> None:
        began = time.monotonic()
        response = service.http.post(f"{service.base_url}/completions", json=slow, timeout=DRAIN_S)
        outcome.update(status=response.status_code, body=response.json(), took=time.monotonic() - began)

    # The drain's probes each on a connection of their own (made now, before the engine is busy):
    # a kept-alive one that the server drops as a probe is sent would fail the test for the
    # client's sake, not the drain's.
    probe = httpx.Client(headers={"connection": "close"})
    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 30
    while engine_requests(service) == 0:
        assert time.monotonic() < deadline, "the slow request never reached the engine"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(service.process.pid, signal.SIGTERM)  # the gateway only, as Kubernetes does first
    signalled = time.monotonic()
    time.sleep(0.3)

    assert worker.is_alive(), "the slow request ended before the drain could be seen"
    try:
        health = probe.get(f"{service.url}/health", timeout=10)
        live = probe.get(f"{service.url}/live", timeout=10)
        refused = probe.post(
            f"{service.base_url}/completions",
            json={"model": TINY_MODEL_NAME, "prompt": "a", "max_tokens": 1},
            timeout=10,
        )
    except httpx.TransportError as exc:
        alive = service.process.poll() is None
        raise AssertionError(
            f"{exc!r} while draining (process alive: {alive}; slow request: "
            f"{outcome}):\n{service.log_tail()}"
        ) from exc
    finally:
        probe.close()
    assert health.status_code == 503
    assert live.status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert int(refused.headers["retry-after"]) >= 1
    assert service.process.poll() is None  # still serving its request

    worker.join(DRAIN_S)
    assert outcome.get("status") == 200, outcome
    body = outcome["body"]
    assert isinstance(body, dict) and body["choices"][0]["finish_reason"] in ("stop", "length")
    assert service.process.wait(timeout=60) is not None
    exited_after = time.monotonic() - signalled
    assert exited_after < DRAIN_S, "the process waited out the whole window with nothing in flight"
