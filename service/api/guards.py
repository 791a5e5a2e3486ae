"""What every request meets before a route sees it: shutdown, API keys, the body cap.

Each is a plain ASGI middleware (a streamed body is counted as it arrives, a streamed answer is in
flight until its last byte) that answers refusals itself, in OpenAI's error shape:

    Draining     while shutting down: 503 + Retry-After for new requests; counts those in flight
    KeyCheck     with keys configured: /v1/*, /tokenize and /detokenize (and /metrics if so
                 set) need a valid Bearer key (401)
    BodyLimit    a body over the cap: 413, from Content-Length before anything is read, else
                 counted while it streams in; nothing reaches the JSON parser. Uploads have a cap
                 of their own and stream through, counted, to the form parser (which spools them
                 to disk): the 413 goes out as soon as the cap is passed

/health and /live stay open and are never refused (a probe must see the truth, not a 401).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.limits import KeyRing
from service.metrics import record
from service.serving.errors import error_body

__all__ = ["BodyLimit", "Drain", "Draining", "KeyCheck"]

logger = logging.getLogger(__name__)

_PROBES = ("/health", "/live")
# After a refusal, read and drop at most this much of the body still arriving, so that the client
# reads the 413 instead of a connection reset; a larger body gets its connection closed.
_DISCARD_LIMIT = 16 * 2**20


async def _refuse(
    send: Send,
    status: int,
    message: str,
    code: str,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.encode(), value.encode()) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class Drain:
    """The shutdown state the server (service/api/shutdown.py) and the middleware share."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.draining = False
        self.in_flight = 0
        self._deadline = 0.0

    def begin(self) -> None:
        if not self.draining:
            self.draining = True
            self._deadline = time.monotonic() + self.timeout_s
            logger.info(
                "shutting down: %d request(s) in flight get up to %.0f s to finish; new requests "
                "get 503",
                self.in_flight,
                self.timeout_s,
            )

    @property
    def finished(self) -> bool:
        """Draining, and nothing is left in flight or the window has ended."""
        if not self.draining:
            return False
        if self.in_flight == 0:
            return True
        if time.monotonic() >= self._deadline:
            logger.warning("drain window ended with %d request(s) in flight", self.in_flight)
            return True
        return False


class Draining:
    def __init__(self, app: ASGIApp, drain: Drain):
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in (*_PROBES, "/metrics"):
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            record.rejected("draining")
            await _refuse(
                send,
                503,
                "The server is shutting down; retry on another replica.",
                "shutting_down",
                [("retry-after", "5"), ("connection", "close")],
            )
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


class KeyCheck:
    def __init__(self, app: ASGIApp, keys: KeyRing, *, metrics_require_key: bool):
        self.app = app
        self.keys = keys
        self.metrics_require_key = metrics_require_key

    def _guarded(self, path: str) -> bool:
        return (
            path.startswith("/v1/")
            or path in ("/v1", "/tokenize", "/detokenize")
            or (self.metrics_require_key and path == "/metrics")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or not self._guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        key = self.keys.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            record.rejected("unauthenticated")
            message = (
                "Incorrect API key provided."
                if token
                else "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
            )
            await _refuse(send, 401, message, "invalid_api_key", [("www-authenticate", "Bearer")])
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, *, uploads: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Upload paths and their own caps: streamed through, counted, not held here.
        self.uploads = uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload_cap = self.uploads.get(scope["path"])
        cap = self.max_bytes if upload_cap is None else upload_cap
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            await self._too_large(scope, receive, send, int(declared), cap=cap)
            return
        if upload_cap is not None:
            await self._stream_counted(scope, receive, send, cap)
            return
        # No (or a small) Content-Length: read the body here, counting; at most max_bytes is held.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                more = bool(message.get("more_body"))
                await self._too_large(scope, receive, send, None, cap=self.max_bytes, more=more)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _stream_counted(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Pass an upload through, counting it; past ``cap`` the 413 is sent at once and the app
        sees the client gone (what it would still send is dropped)."""
        size = 0
        refused = False

        async def counted() -> Message:
            nonlocal size, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                size += len(message.get("body", b""))
                if size > cap:
                    refused = True
                    more = bool(message.get("more_body"))
                    await self._too_large(scope, receive, send, None, cap=cap, more=more)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise  # a real failure; after a refusal the app only saw the client go

    async def _too_large(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        declared: int | None,
        *,
        cap: int,
        more: bool = True,
    ) -> None:
        record.rejected("body_too_large")
        # Read what is still coming (unless the client waits for 100-continue), so it gets the 413.
        waiting = (_header(scope, b"expect") or "").lower() == "100-continue"
        fits = declared is None or declared <= _DISCARD_LIMIT
        discarded = 0
        while more and not waiting and fits and discarded <= _DISCARD_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                break
            discarded += len(message.get("body", b""))
            more = message.get("more_body", False)
        size = f"{declared} bytes" if declared is not None else f"more than {cap} bytes"
        await _refuse(
            send,
            413,
            f"The request body ({size}) is over this server's limit of {cap} bytes.",
            "request_too_large",
            [("connection", "close")],
        )
