"""Request ids and request metrics.

``RequestIds`` gives every request an id (``x-request-id``, the client's own when it sent one) and
OpenAI's ``openai-processing-ms``; ``RequestMetrics`` counts every completion request by route,
model and status, and times it."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import record
from service.request_ids import request_id_for, request_id_scope

__all__ = ["RequestIds", "RequestMetrics"]


class RequestIds:
    """ASGI middleware: the request's id in its context (logs, error bodies) and on its response,
    with the time to its first byte as ``openai-processing-ms``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        sent = dict(scope["headers"]).get(b"x-request-id")
        request_id = request_id_for(sent.decode("latin-1") if sent is not None else None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = round((time.monotonic() - began) * 1000)
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in (b"x-request-id", b"openai-processing-ms")
                ]
                headers += [
                    (b"x-request-id", request_id.encode()),
                    (b"openai-processing-ms", str(elapsed_ms).encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        with request_id_scope(request_id):
            await self.app(scope, receive, send_with_id)


class RequestMetrics:
    """ASGI middleware for the endpoints that generate (``_generates``). The handler names the
    route (request.state); requests refused before that (invalid JSON, unknown model) count under
    route and model "none". Latency runs to the last byte, so a streamed answer counts whole."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _generates(scope):
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("state", {}).get("route")
            if route is None:
                record.request_finished("none", "none", status, None)
            else:
                record.request_finished(
                    route.kind.value, route.model_id, status, time.monotonic() - began
                )


def _generates(scope: Scope) -> bool:
    """The completion endpoints, and the Responses API's create (POST /v1/responses)."""
    path = scope["path"]
    return path.endswith("completions") or (path == "/v1/responses" and scope["method"] == "POST")
