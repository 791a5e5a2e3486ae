"""The embedded default model through a stock `vllm serve` worker, named by its path as compose and
k8s name it: all three routes (the shipped distilled adapter served by the worker), and structured
outputs (on the power route too), tools and logit bias, which the gateway forwards in the fields
the worker's API takes (``structured_outputs``, ``logit_bias``). One worker (the tiny model's four
tokens cannot spell JSON)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from loadtests.harness import ServiceProcess
from service.config import Settings
from service.model_store import ensure_default_model
from tests.api.test_structured_outputs import (
    ASK,
    MODEL,
    NAMED,
    POWER,
    check_forced_tool_call,
    check_logit_bias,
    check_parse,
)
from tests.conftest import start_service


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("remote-structured")
    model = ["--model", str(ensure_default_model(Settings().cache_dir))]
    worker = ServiceProcess(model, logs / "worker.log", command="worker")
    service = None
    try:
        worker.wait_ready()
        service = start_service(
            tmp_path_factory, "structured-gateway", model, env={"POWERSERVE_WORKERS": worker.url}
        )
        yield service
    finally:
        for process in (service, worker):
            if process is not None:
                process.stop()


@pytest.fixture(scope="module")
def client(gateway: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)


def test_the_workers_serve_all_three_routes(client: openai.OpenAI) -> None:
    routes = {card.id for card in client.models.list().data}
    assert routes == {MODEL, f"{MODEL}-power", f"{MODEL}-distilled"}
    distilled = client.chat.completions.create(
        model=f"{MODEL}-distilled", messages=ASK, max_tokens=4, seed=1
    )
    assert distilled.choices[0].message.content and distilled.usage is not None


def test_a_named_tool_call_through_a_worker(client: openai.OpenAI) -> None:
    check_forced_tool_call(client, NAMED)


def test_a_json_schema_through_a_worker(client: openai.OpenAI) -> None:
    check_parse(client)


def test_power_under_a_schema_through_a_worker(client: openai.OpenAI) -> None:
    """Constrained particles on the worker, and their unmasked rescoring there too."""
    check_parse(client, POWER)


def test_logit_bias_through_a_worker(client: openai.OpenAI, gateway: ServiceProcess) -> None:
    check_logit_bias(client, gateway)
