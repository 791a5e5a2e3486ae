"""Server-sent events, and stopping work when the client goes away.

A power answer may take minutes; a client that disconnects meanwhile must not leave its chains
running. Both helpers here cancel the handler's work on ``http.disconnect``: the cancellation reaches
the engine, which aborts the requests (AsyncLLM.generate aborts on CancelledError).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from functools import partial
from typing import Any, TypeVar

import anyio
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.api.errors import error_body, status_of
from service.errors import PowerserveError

__all__ = ["ClientDisconnected", "EventStreamResponse", "cancel_on_disconnect", "sse_events"]

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` that watches for the client's disconnect the whole time.

    Starlette skips the disconnect listener for ASGI 2.4 servers and notices a closed connection
    only on its next write, which for a power answer streamed at its end can be minutes away.
    """

    def __init__(self, content: AsyncIterator[str], **kwargs: Any):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"} | kwargs.pop("headers", {})
        super().__init__(content, media_type="text/event-stream", headers=headers, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def run_then_stop(func: Any) -> None:
                await func()
                group.cancel_scope.cancel()

            group.start_soon(run_then_stop, partial(self.stream_response, send))
            await run_then_stop(partial(self.listen_for_disconnect, receive))


async def sse_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Format chunks as SSE ``data:`` lines, end with ``[DONE]``; an error mid-stream becomes an
    OpenAI error event (the status line has long been sent)."""
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
    except PowerserveError as exc:
        body = error_body(status_of(exc), exc.message, param=exc.param, code=exc.code)
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


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
