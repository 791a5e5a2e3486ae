"""When the engine dies, /health says 503 and requests get a 503 OpenAI error, never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import TINY_MODEL_NAME, start_service, tiny_engine_args


@pytest.fixture(scope="module")
def doomed_service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    service = start_service(tmp_path_factory, "doomed", tiny_engine_args(tiny_model_dir))
    yield service
    service.stop()


def test_dead_engine_gives_503(doomed_service) -> None:
    url = doomed_service.url
    body = {"model": TINY_MODEL_NAME, "prompt": "a", "max_tokens": 2}
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200

    # Kill vLLM's engine-core processes under the gateway, as an out-of-memory killer would.
    engine_processes = psutil.Process(doomed_service.process.pid).children(recursive=True)
    assert engine_processes
    for process in engine_processes:
        process.kill()

    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/health", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "health still reports 200 a minute after the engine died"
        time.sleep(0.5)
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.json()["error"]["type"] == "service_unavailable_error"

    began = time.monotonic()
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 503, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code", "request_id"}
    assert time.monotonic() - began < 10
