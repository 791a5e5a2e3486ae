"""Shared fixtures: real servers, started once per session.

- ``tiny_service``: the service on a 4-token Llama the tests build (seconds to load, every answer
  enumerable), used by most API tests and the exactness tests.
- ``default_service``: the service on the embedded default model (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from loadtests.harness import RedisProcess, ServiceProcess
from loadtests.tiny_model import SHARP_PROMPT, SHARP_SEED, SHARP_WEIGHT_SCALE, build_tiny_model
from service.distill.train import TrainConfig, train_adapter

# The tiny model: p**4 and temperature-1/4 sampling differ a lot on it (loadtests/tiny_model.py).
TINY_SEED = SHARP_SEED
TINY_WEIGHT_SCALE = SHARP_WEIGHT_SCALE
TINY_MODEL_NAME = "tiny"
TINY_PROMPT = SHARP_PROMPT  # "a b"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / TINY_MODEL_NAME
    return build_tiny_model(out, seed=TINY_SEED, weight_scale=TINY_WEIGHT_SCALE)


def tiny_engine_args(model_dir: Path) -> list[str]:
    return ["--model", str(model_dir), "--max-model-len", "64", "--kv-cache-gib", "1"]


def start_service(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    args: list[str],
    env: dict[str, str] | None = None,
) -> ServiceProcess:
    log = tmp_path_factory.mktemp("logs") / f"{name}.log"
    return ServiceProcess(args, log, env).wait_ready()


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A LoRA adapter for the tiny model, so that its service has a -distilled route: a few steps
    on answers p**4 favours (the distillation pipeline itself is tested in tests/distill)."""
    work = tmp_path_factory.mktemp("adapter")
    teacher = work / "teacher.jsonl"
    answers = [(1, 2, 0), (2, 1, 3)] * 8
    teacher.write_text(
        "".join(
            json.dumps({"prompt_ids": list(TINY_PROMPT), "token_ids": list(a)}) + "\n" for a in answers
        )
    )
    config = TrainConfig(rank=8, max_steps=10, learning_rate=1e-2, batch_size=8)
    train_adapter(tiny_model_dir, teacher, work / "adapter", config)
    return work / "adapter"


@pytest.fixture
def clean_settings_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the machine running the tests, and no .env but the test's own (the
    settings, CLI and runtime tests)."""
    for name in os.environ:
        if name.upper().startswith("POWERSERVE_") or name.upper() in ("HOST", "PORT", "REDIS_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_service(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    tiny_adapter: Path,
    redis_server: RedisProcess,
) -> Iterator[ServiceProcess]:
    """The tiny model with its three routes, and Redis as its response cache (the default service
    keeps the in-process LRU)."""
    args = [*tiny_engine_args(tiny_model_dir), "--distilled-adapter", str(tiny_adapter)]
    env = {"REDIS_URL": redis_server.url}
    # MH is the reference sampler the exactness tests check; SMC requests name their method.
    args += ["--max-n", "512", "--power-method", "mh"]
    # SMC requests that set no N get 4 to 8 particles by the engine's load (off by default).
    args += ["--power-particles-max", "8"]
    service = start_service(tmp_path_factory, "tiny", args, env=env)
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
