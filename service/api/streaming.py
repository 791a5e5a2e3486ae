"""Server-sent events, and stopping work when the client goes away.

A power answer may take minutes; a client that disconnects meanwhile must not leave its chains
running, and a proxy with an idle timeout must not drop a stream that is silent while a chain runs.
``event_stream`` (sse-starlette) sends a keep-alive comment every 15 s of silence and cancels the
stream's work on ``http.disconnect``; ``cancel_on_disconnect`` does the same for a JSON answer. The
cancellation reaches the engine, which aborts the requests (AsyncLLM.generate aborts on
CancelledError).

Two kinds of stream: the completions' (``data:`` chunks, then ``data: [DONE]``) and the Responses
API's (each event named by an ``event:`` line, the last one being the response's final state).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.errors import PowerserveError
from service.pipeline import ModelRoute
from service.serving import Answer, Caller, StreamedAnswer
from service.serving.errors import error_of

__all__ = [
    "KEEP_ALIVE_S",
    "ClientDisconnected",
    "cancel_on_disconnect",
    "event_stream",
    "send_answer",
]

T = TypeVar("T")

# Proxies commonly drop connections idle for 60 s; a comment line every 15 s keeps them open.
KEEP_ALIVE_S = 15.0


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


class _Prepared(Protocol):
    """A prepared request (completions' ``Prepared``, Responses' ``PreparedResponse``)."""

    @property
    def route(self) -> ModelRoute: ...

    @property
    def stream(self) -> bool: ...


_PreparedT = TypeVar("_PreparedT", bound=_Prepared)
_PreparedIn = TypeVar("_PreparedIn", bound=_Prepared, contravariant=True)


class _Serving(Protocol[_PreparedIn]):
    """A serving object that answers its prepared requests whole or streamed."""

    async def answer(self, prepared: _PreparedIn, caller: Caller) -> Answer: ...

    async def stream(self, prepared: _PreparedIn, caller: Caller) -> StreamedAnswer: ...


async def send_answer(
    request: Request,
    serving: _Serving[_PreparedT],
    prepared: _PreparedT,
    caller: Caller,
    *,
    named_events: bool = False,
) -> Response:
    """A prepared request's response: JSON, or SSE (``named_events``: the Responses API's stream);
    the work stops if the client goes."""
    request.state.route = prepared.route  # for the request metrics (api/observe.py)
    if prepared.stream:
        streamed = await serving.stream(prepared, caller)
        return event_stream(streamed.chunks, headers=streamed.headers, named=named_events)
    try:
        answer = await cancel_on_disconnect(request, serving.answer(prepared, caller))
    except ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the work has been cancelled
    return JSONResponse(answer.body, headers=answer.headers)


def event_stream(
    chunks: AsyncIterator[dict[str, Any]], *, headers: Mapping[str, str], named: bool = False
) -> EventSourceResponse:
    """Chunks as SSE ``data:`` events ending with ``[DONE]``, keep-alive comments between.
    ``named``: each chunk is an event named by its ``type`` and nothing follows the last (the
    Responses API's stream)."""
    return EventSourceResponse(
        _events(chunks, named=named),
        headers={"X-Accel-Buffering": "no", **headers},
        ping=KEEP_ALIVE_S,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        sep="\n",
    )


async def _events(
    chunks: AsyncIterator[dict[str, Any]], *, named: bool
) -> AsyncIterator[ServerSentEvent]:
    """An error mid-stream becomes an OpenAI error event (the status line has long been sent)."""
    try:
        async for chunk in chunks:
            data = json.dumps(chunk, separators=(",", ":"))
            yield ServerSentEvent(data=data, event=chunk["type"] if named else None)
    except PowerserveError as exc:
        _status, body = error_of(exc)
        yield ServerSentEvent(data=json.dumps(body))
    if not named:
        yield ServerSentEvent(data="[DONE]")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (non-streaming requests)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnected()
    return task.result()
