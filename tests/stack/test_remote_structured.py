"""Structured outputs, tools and logit bias through a stock `vllm serve` worker: the gateway
forwards the constraint (``structured_outputs``) and the bias in the fields the worker's API takes.
One worker on the embedded default model (the tiny model's four tokens cannot spell JSON)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from loadtests.harness import ServiceProcess
from tests.api.test_structured_outputs import (
    NAMED,
    check_forced_tool_call,
    check_logit_bias,
    check_parse,
)
from tests.conftest import start_service


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("remote-structured")
    worker = ServiceProcess([], logs / "worker.log", command="worker")
    service = None
    try:
        worker.wait_ready()
        service = start_service(
            tmp_path_factory, "structured-gateway", [], env={"POWERSERVE_WORKERS": worker.url}
        )
        yield service
    finally:
        for process in (service, worker):
            if process is not None:
                process.stop()


@pytest.fixture(scope="module")
def client(gateway: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)


def test_a_named_tool_call_through_a_worker(client: openai.OpenAI) -> None:
    check_forced_tool_call(client, NAMED)


def test_a_json_schema_through_a_worker(client: openai.OpenAI) -> None:
    check_parse(client)


def test_logit_bias_through_a_worker(client: openai.OpenAI, gateway: ServiceProcess) -> None:
    check_logit_bias(client, gateway)
