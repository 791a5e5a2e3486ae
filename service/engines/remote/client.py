"""HTTP to the workers: probes, completions and their SSE streams, and what a worker's failure means.

The client is aiohttp: every MCMC proposal is a request, hundreds in flight at once, and httpx's
connection pool costs CPU that grows with the connections in use (encode/httpx#3215).

A request counts against its worker's load while in flight, and gives up as soon as its worker is
marked down (``WorkerState.down``), so that it can move to another at once rather than wait for its
timeout.

What a worker says goes to the log, not to the client: a failure is a ``WorkerFailed`` whose text (the
worker's body, aiohttp's error with its URL) only the engine's log shows. Only a refusal that is the
request's fault (400, 413, 422) reaches the client, as an ``InvalidRequestError`` with vLLM's message
stripped of internals (``wire.client_message``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

import aiohttp

from service.engines.remote import wire
from service.engines.remote.pool import WorkerState
from service.errors import ContextLengthError, InvalidRequestError

__all__ = [
    "WorkerAnswerInvalid",
    "WorkerCannotServe",
    "WorkerClient",
    "WorkerFailed",
    "WorkerRefused",
]

logger = logging.getLogger(__name__)

# How much of a worker's answer the log shows.
_LOGGED = 500

_T = TypeVar("_T")


class WorkerFailed(Exception):
    """This worker could not serve the request; another may."""


class WorkerRefused(WorkerFailed):
    """Nothing listens at the worker's address: it is down."""


class WorkerAnswerInvalid(WorkerFailed):
    """The worker answered, but not as vLLM does: a body that is not JSON or JSON of another shape (a
    proxy's error page, a truncated body), a stream that is not an event stream. Whatever answers at its
    address cannot serve; the engine marks it down until its health checks pass again."""


class WorkerCannotServe(WorkerFailed):
    """The worker answered 404: it lacks the model or adapter asked for. It is healthy, and asking it
    again is pointless; a worker that has it may serve."""


class WorkerClient:
    """One connection pool to every worker of an engine."""

    def __init__(self, *, request_timeout_s: float):
        self._request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            # Idle connections expire before the workers' (uvicorn: 5 s) so none is reused as it closes.
            connector=aiohttp.TCPConnector(limit=4096, keepalive_timeout=2.0),
            timeout=aiohttp.ClientTimeout(sock_connect=2.0, sock_read=self._request_timeout_s),
            read_bufsize=1 << 20,  # a streamed event is one line, whatever its top log-probs
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("WorkerClient.start() was not called")
        return self._session

    async def get(self, url: str, *, timeout_s: float) -> bytes:
        """A GET that must succeed (a probe); raises aiohttp's errors and TimeoutError."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.session.get(url, timeout=timeout, allow_redirects=False) as response:
            response.raise_for_status()
            return await response.read()

    async def post(self, url: str, body: dict[str, Any], *, timeout_s: float) -> tuple[int, str]:
        """A POST whose status the caller judges (an administrative call such as loading an
        adapter): (status, body text); raises aiohttp's errors and TimeoutError."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.session.post(url, json=body, timeout=timeout, allow_redirects=False) as response:
            return response.status, await response.text()

    async def complete(
        self, worker: WorkerState, body: dict[str, Any], *, timeout_s: float
    ) -> dict[str, Any]:
        """POST a non-streamed completion; past ``timeout_s`` it fails on this worker."""
        try:
            with worker.busy():
                result = await _until_down(worker, self._fetch(worker, body, timeout_s))
            if result is None:
                raise WorkerFailed("worker went down during the request")
            worker.last_progress = time.monotonic()
            return result
        except aiohttp.ClientConnectorError as exc:
            raise WorkerRefused(f"connection refused: {exc!r}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:  # connection lost, a stalled worker
            raise WorkerFailed(f"request failed: {exc!r}") from exc

    async def stream(
        self, worker: WorkerState, body: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST a streamed completion and yield its events (JSON objects); a silence longer than the
        request timeout fails it on this worker, and so does a stream that ends before ``[DONE]``."""
        try:
            with worker.busy():
                async with self.session.post(
                    f"{worker.url}/v1/completions", json=body, allow_redirects=False
                ) as response:
                    await _raise_for_status(worker, response, body)
                    if response.content_type != "text/event-stream":
                        head = await _until_down(worker, response.content.read(_LOGGED))
                        raise WorkerAnswerInvalid(
                            f"a {response.content_type} answer to a stream, not events: {head!r}"
                        )
                    done = False
                    while line := await _until_down(worker, _readline(response.content)):
                        worker.last_progress = time.monotonic()
                        event = line.strip()
                        if event == b"data: [DONE]":
                            done = True
                        elif event.startswith(b"data: ") and not done:
                            parsed = _event(event.removeprefix(b"data: "))
                            # Not a usage-only event (a worker run with --enable-force-include-usage).
                            if parsed.get("choices") != []:
                                yield parsed
                    if worker.down.is_set():
                        raise WorkerFailed("worker went down during the stream")
                    if not done:
                        raise WorkerFailed("the stream ended before its [DONE]")
        except aiohttp.ClientConnectorError as exc:
            raise WorkerRefused(f"connection refused: {exc!r}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:  # connection lost, a stalled stream
            raise WorkerFailed(f"stream failed: {exc!r}") from exc

    async def _fetch(
        self, worker: WorkerState, body: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        async with self.session.post(
            f"{worker.url}/v1/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=2.0),
            allow_redirects=False,  # a worker never redirects; a prompt goes to no other host
        ) as response:
            await _raise_for_status(worker, response, body)
            return _json_object(await response.read())


async def _until_down(worker: WorkerState, awaitable: Awaitable[_T]) -> _T | None:
    """Await ``awaitable`` unless the worker is marked down first (then None)."""
    task = asyncio.ensure_future(awaitable)
    down = asyncio.ensure_future(worker.down.wait())
    try:
        await asyncio.wait({task, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        down.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None
    return task.result()


async def _readline(content: aiohttp.StreamReader) -> bytes:
    try:
        return await content.readline()
    except ValueError as exc:  # a line longer than the read buffer: no event of vLLM's
        raise WorkerAnswerInvalid(f"a stream that is not events: {exc}") from exc


def _json_object(raw: bytes) -> dict[str, Any]:
    """A worker's answer as the JSON object it must be; anything else is a worker's fault."""
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or absurdly nested
        raise WorkerAnswerInvalid(f"an answer that is not JSON ({exc}): {raw[:_LOGGED]!r}") from None
    if not isinstance(parsed, dict):
        raise WorkerAnswerInvalid(f"an answer that is not a JSON object: {raw[:_LOGGED]!r}")
    return parsed


def _event(data: bytes) -> dict[str, Any]:
    """One event of a stream; vLLM reports a failure after the stream began as an error event."""
    event = _json_object(data)
    if "error" in event:
        raise WorkerFailed(f"an error event in the stream: {data[:_LOGGED]!r}")
    return event


async def _raise_for_status(
    worker: WorkerState, response: aiohttp.ClientResponse, body: dict[str, Any]
) -> None:
    """Raise what a worker's error status means; its body goes to the log only."""
    if response.status < 400:
        return
    text = (await response.read()).decode("utf-8", errors="replace")
    logged = text[:_LOGGED]
    if response.status == 404:
        raise WorkerCannotServe(f"HTTP 404 for model {body.get('model')!r}: {logged}")
    # The request itself is wrong (vLLM's validation): every worker would refuse it alike.
    if response.status in (400, 413, 422):
        logger.info("%s refused a request (HTTP %d): %s", worker.name, response.status, logged)
        message = wire.client_message(text) or "The request was refused as invalid."
        if message.startswith("This model's maximum context length"):
            raise ContextLengthError(message)
        raise InvalidRequestError(message)
    # A server error, or a refusal that is the worker's (401/403: it wants a key; 429: it is full; a
    # proxy's 405 or 502): another worker may serve.
    raise WorkerFailed(f"HTTP {response.status}: {logged}")
