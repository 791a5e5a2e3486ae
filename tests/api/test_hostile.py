"""A hostile client against the bounds (the tiny model's service): each bound refuses at once, with
an OpenAI error naming what was too much, and leaves the gateway's memory where it was."""

from __future__ import annotations

import json
import time

import httpx

from loadtests.harness import ServiceProcess
from tests.api.test_errors import assert_openai_error
from tests.conftest import TINY_MODEL_NAME


def _post(service: ServiceProcess, path: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, dict):
        return service.http.post(f"{service.base_url}{path}", json=body, timeout=60)
    headers = {"content-type": "application/json"}
    return service.http.post(f"{service.base_url}{path}", content=body, headers=headers, timeout=60)


def test_choices_are_capped_before_any_work(tiny_service: ServiceProcess) -> None:
    """A 5 kB body of 1,000 one-token prompts would be 1,000 engine sequences: refused as a whole
    before anything is tokenised or admitted."""
    began = time.monotonic()
    response = _post(tiny_service, "/completions", {"model": TINY_MODEL_NAME, "prompt": [[1]] * 1000})
    error = assert_openai_error(response, 400, param="prompt")
    assert error["code"] == "too_many_choices"
    assert "1000" in error["message"]
    assert time.monotonic() - began < 5
    # n counts too: two prompts at n = 300 are 600 choices (one prompt may ask for max-n).
    response = _post(
        tiny_service,
        "/completions",
        {"model": TINY_MODEL_NAME, "prompt": ["a", "b"], "n": 300, "max_tokens": 1},
    )
    assert assert_openai_error(response, 400, param="prompt")["code"] == "too_many_choices"


def test_any_64_bit_seed_is_accepted_and_no_other(tiny_service: ServiceProcess) -> None:
    for route in (TINY_MODEL_NAME, f"{TINY_MODEL_NAME}-power"):
        for seed in (-5, -(2**63), 2**64 - 1):
            body = {"model": route, "prompt": "a b", "max_tokens": 2, "seed": seed}
            response = _post(tiny_service, "/completions", body)
            assert response.status_code == 200, (route, seed, response.text)
    for seed in (2**64, -(2**63) - 1):
        body = {"model": TINY_MODEL_NAME, "prompt": "a b", "max_tokens": 2, "seed": seed}
        assert_openai_error(_post(tiny_service, "/completions", body), 400, param="seed")


def test_more_alternatives_than_the_vocabulary_leave_the_engine_alive(
    tiny_service: ServiceProcess,
) -> None:
    """The tiny model has 4 tokens; 20 alternatives per token (the API's bound) once killed vLLM's
    engine core (top-k out of range). They are capped at the vocabulary."""
    body = {"model": TINY_MODEL_NAME, "prompt": [[0, 1]], "max_tokens": 2, "logprobs": 20}
    response = _post(tiny_service, "/completions", body)
    assert response.status_code == 200, response.text
    alternatives = response.json()["choices"][0]["logprobs"]["top_logprobs"]
    assert all(len(position) <= 4 for position in alternatives)
    assert tiny_service.http.get(f"{tiny_service.url}/health").status_code == 200


def test_deeply_nested_body_is_400(tiny_service: ServiceProcess) -> None:
    depth = 100_000
    raw = b'{"model": "tiny", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
    assert_openai_error(_post(tiny_service, "/completions", raw), 400)


def test_refused_long_chats_do_not_grow_memory(tiny_service: ServiceProcess) -> None:
    """Distinct chats of ~0.9 MB, each refused for its length: nothing of them is kept (the
    rendered-conversation cache is bounded by bytes and skips conversations this large). The first
    few set the process's high-water mark (the allocator keeps what one such request needs); the
    next 20 must not add to it (the unbounded cache kept ~5 MiB of each)."""

    def refused_chat(i: int) -> None:
        content = f"{i} " + "a b " * 225_000  # ~0.9 MB
        body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": content}]}
        response = _post(tiny_service, "/chat/completions", json.dumps(body).encode())
        assert_openai_error(response, 400, param="messages")

    for i in range(4):
        refused_chat(i)
    before = tiny_service.rss_mib()
    for i in range(4, 24):
        refused_chat(i)
    grown = tiny_service.rss_mib() - before
    assert grown < 24, f"the gateway grew by {grown:.0f} MiB over 20 refused chats"
