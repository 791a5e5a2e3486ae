"""Shared fixtures: real servers, started once per session.

- ``tiny_service``: the service on a 4-token Llama the tests build (seconds to load, every answer
  enumerable), used by most API tests and the exactness tests.
- ``default_service``: the service on the embedded default model (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from loadtests.harness import RedisProcess, ServiceProcess
from tests.tiny_model import build_tiny_model

# The tiny model: seed and weight scale chosen so that p**4 and temperature-1/4 sampling differ a lot
# (total variation 0.46 at a horizon of 3 tokens); tests/test_tiny_model.py checks that it still does.
TINY_SEED = 1
TINY_WEIGHT_SCALE = 20.0
TINY_MODEL_NAME = "tiny"
TINY_PROMPT = (0, 1)  # "a b"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / TINY_MODEL_NAME
    return build_tiny_model(out, seed=TINY_SEED, weight_scale=TINY_WEIGHT_SCALE)


def start_service(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    args: list[str],
    env: dict[str, str] | None = None,
) -> ServiceProcess:
    log = tmp_path_factory.mktemp("logs") / f"{name}.log"
    service = ServiceProcess(args, log, env)
    try:
        return service.wait_ready()
    except BaseException:
        service.stop()
        raise


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, redis_server: RedisProcess
) -> Iterator[ServiceProcess]:
    """The tiny model, with Redis as its response cache (the default service keeps the LRU)."""
    args = [
        "--model",
        str(tiny_model_dir),
        "--max-model-len",
        "64",
        "--kv-cache-gib",
        "1",
        "--max-n",
        "512",
    ]
    service = start_service(tmp_path_factory, "tiny", args, env={"REDIS_URL": redis_server.url})
    yield service
    service.stop()


@pytest.fixture(scope="session")
def default_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = start_service(tmp_path_factory, "default", [])
    yield service
    service.stop()


@pytest.fixture(scope="session")
def tiny_client(tiny_service: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_service.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def default_client(default_service: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=default_service.base_url, api_key="unused", max_retries=0, timeout=300)
