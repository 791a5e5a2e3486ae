"""The two kinds of SSE stream (service/api/streaming.py), byte for byte, on a bare app: the
completions' ``data:`` chunks ending with ``[DONE]``, and the Responses API's named events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sse_starlette import EventSourceResponse

from service.api.streaming import event_stream
from service.errors import EngineError

CHUNKS = [{"type": "response.created", "n": 1}, {"type": "response.completed", "n": 2}]


def streamed(*, named: bool, fail: bool = False) -> str:
    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for chunk in CHUNKS:
            yield chunk
        if fail:
            raise EngineError("the engine failed")

    app = FastAPI()

    @app.get("/stream")
    async def stream() -> EventSourceResponse:
        return event_stream(chunks(), headers={}, named=named)

    with TestClient(app) as client:
        return client.get("/stream").text.replace("\r\n", "\n")  # sse-starlette's line ends


def test_completion_chunks_are_data_events_ending_with_done() -> None:
    assert streamed(named=False) == (
        'data: {"type":"response.created","n":1}\n\n'
        'data: {"type":"response.completed","n":2}\n\n'
        "data: [DONE]\n\n"
    )


def test_responses_events_are_named_by_their_type_and_nothing_follows_the_last() -> None:
    assert streamed(named=True) == (
        'event: response.created\ndata: {"type":"response.created","n":1}\n\n'
        'event: response.completed\ndata: {"type":"response.completed","n":2}\n\n'
    )


def test_an_error_mid_stream_is_an_openai_error_event() -> None:
    last = streamed(named=False, fail=True).split("\n\n")[-3]
    assert last.startswith('data: {"error": {"message": "the engine failed"')
