"""The Responses API's routes on a bare app whose gateway holds only a ResponsesServing (no engine):
stored responses retrieved, paged, cancelled and deleted over HTTP, and requests refused before any
generation, each answer OpenAI-shaped. Generation itself: tests/api/test_responses_api.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.errors import install_error_handlers
from service.api.routes import responses as routes
from service.serving import ChatServing, ResponsesServing
from service.serving.responses import input_items, new_item_id, response_from_chat, response_head
from service.serving.responses_protocol import ResponseCreateRequest
from service.serving.stored_responses import MemoryStoredResponses, StoredResponse


@pytest.fixture
def stored() -> tuple[TestClient, dict[str, Any]]:
    """A client of the routes, and a response stored without keys (every caller sees it)."""
    store = MemoryStoredResponses(ttl_s=60, max_bytes=1 << 20, max_stored=10)
    conversation = [{"role": "user", "content": text} for text in "abc"]
    request = ResponseCreateRequest.model_validate({"model": "m", "input": conversation})
    chat = {
        "choices": [{"message": {"content": "Hello."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    response = response_from_chat(response_head(request, new_item_id("resp"), "m"), chat)
    items = input_items(request.input)
    asyncio.run(store.save(StoredResponse(response, items, None)))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(routes.router)
    # Chat is never reached: these requests are answered from the store or refused before it.
    app.state.gateway = SimpleNamespace(responses=ResponsesServing(cast(ChatServing, None), store))
    return TestClient(app), response


def error(answer: Any) -> tuple[int, str | None, str | None]:
    body = answer.json()["error"]
    return answer.status_code, body["code"], body["param"]


def test_a_stored_response_is_retrieved_paged_and_deleted(
    stored: tuple[TestClient, dict[str, Any]],
) -> None:
    client, response = stored
    path = f"/v1/responses/{response['id']}"
    assert client.get(path).json() == response
    page = client.get(f"{path}/input_items", params={"limit": 2, "order": "asc"}).json()
    assert [item["content"][0]["text"] for item in page["data"]] == ["a", "b"] and page["has_more"]
    assert error(client.get(f"{path}/input_items", params={"limit": 0}))[0] == 400
    assert error(client.post(f"{path}/cancel")) == (400, "invalid_value", "response_id")
    assert client.delete(path).json() == {"id": response["id"], "object": "response", "deleted": True}
    assert error(client.get(path)) == (404, "not_found", "response_id")


def test_requests_are_refused_before_any_generation(stored: tuple[TestClient, dict[str, Any]]) -> None:
    client, _response = stored
    refused = client.post("/v1/responses", json={"model": "m", "input": "hi", "background": True})
    assert error(refused) == (400, "unsupported_parameter", "background")
    refused = client.post("/v1/responses", json={"model": "m", "tools": [{"type": "web_search"}]})
    assert error(refused) == (400, "invalid_value", "tools")
    unknown = {"model": "m", "input": "hi", "previous_response_id": new_item_id("resp")}
    assert error(client.post("/v1/responses", json=unknown)) == (
        404,
        "previous_response_not_found",
        "previous_response_id",
    )
