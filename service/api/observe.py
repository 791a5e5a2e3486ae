"""Request metrics: every completion request counted by route, model and status, and timed."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import record

__all__ = ["RequestMetrics"]


class RequestMetrics:
    """ASGI middleware for the completion endpoints. The handler names the route (request.state);
    requests refused before that (invalid JSON, unknown model) count under route and model "none".
    Latency runs to the last byte, so a streamed answer counts whole."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("completions"):
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
