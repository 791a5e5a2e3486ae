"""Bad requests get OpenAI-shaped errors with the right status, and the service stays up."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import TINY_MODEL_NAME

MODEL = TINY_MODEL_NAME


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_unknown_model_is_404(tiny_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        tiny_client.completions.create(model="no-such-model", prompt="a", max_tokens=1)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 5),
        ("temperature", -1),
        ("top_p", 0),
        ("n", 0),
        ("max_tokens", 0),
        ("logprobs", 99),
        ("presence_penalty", 3),
        ("stop", ["a", "b", "c", "a b", "b c"]),
        ("seed", "not-a-number"),
    ],
)
def test_invalid_parameter_is_400_naming_it(tiny_service, field: str, value: object) -> None:
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2, field: value}
    response = httpx.post(f"{tiny_service.base_url}/completions", json=body, timeout=30)
    error = assert_openai_error(response, 400, param=field)
    assert error["type"] == "invalid_request_error"


def test_invalid_parameter_through_the_sdk(tiny_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a"}], temperature=3
        )
    assert caught.value.body["param"] == "temperature"


def test_n_above_the_limit_is_400(tiny_service) -> None:
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1, "n": 10_000}
    response = httpx.post(f"{tiny_service.base_url}/completions", json=body, timeout=30)
    assert_openai_error(response, 400, param="n")


def test_missing_required_fields_are_400(tiny_service) -> None:
    response = httpx.post(f"{tiny_service.base_url}/chat/completions", json={"model": MODEL}, timeout=30)
    assert_openai_error(response, 400, param="messages")


def test_prompt_longer_than_the_context_is_400(tiny_client: openai.OpenAI) -> None:
    # The tiny service runs with a 64-token context.
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_client.completions.create(model=MODEL, prompt="a " * 80, max_tokens=1)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert caught.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_client.completions.create(model=MODEL, prompt="a b", max_tokens=63)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert caught.value.body["param"] == "max_tokens"


def test_token_ids_outside_the_vocabulary_are_400(tiny_service) -> None:
    body = {"model": MODEL, "prompt": [0, 1, 99], "max_tokens": 1}
    response = httpx.post(f"{tiny_service.base_url}/completions", json=body, timeout=30)
    assert_openai_error(response, 400, param="prompt")


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "tiny", "prompt": ', b"not json at all", b'["a", "list"]', b"\xff\xfe\x00garbage"],
    ids=["truncated", "text", "array", "invalid-utf8"],
)
def test_malformed_bodies_are_400(tiny_service, raw: bytes) -> None:
    response = httpx.post(
        f"{tiny_service.base_url}/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_openai_error(response, 400)


def test_unsupported_content_parts_are_400(tiny_service) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    response = httpx.post(
        f"{tiny_service.base_url}/chat/completions",
        json={"model": MODEL, "messages": messages},
        timeout=30,
    )
    assert_openai_error(response, 400)


def test_unknown_path_is_an_openai_404(tiny_service) -> None:
    response = httpx.get(f"{tiny_service.url}/v1/nothing-here", timeout=30)
    assert_openai_error(response, 404)


def test_service_still_healthy_after_the_errors(tiny_service) -> None:
    assert httpx.get(f"{tiny_service.url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{tiny_service.url}/live", timeout=30).json() == {"status": "alive"}
