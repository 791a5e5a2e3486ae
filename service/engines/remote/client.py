"""HTTP to the workers: probes, completions and their SSE streams, and what a worker's failure means.

The client is aiohttp: every MCMC proposal is a request, hundreds in flight at once, and httpx's
connection pool costs CPU that grows with the connections in use (encode/httpx#3215).

A request counts against its worker's load while in flight, and gives up as soon as its worker is
marked down (``WorkerState.down``), so that it can move to another at once rather than wait for its
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import aiohttp

from service.engines.remote.pool import WorkerState
from service.errors import EngineError, InvalidRequestError

__all__ = ["WorkerCannotServe", "WorkerClient", "WorkerFailed", "WorkerRefused"]

_T = TypeVar("_T")


class WorkerFailed(Exception):
    """This worker could not serve the request; another may."""


class WorkerRefused(WorkerFailed):
    """Nothing listens at the worker's address: it is down."""


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
        async with self.session.get(url, timeout=timeout) as response:
            response.raise_for_status()
            return await response.read()

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

    async def stream(self, worker: WorkerState, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST a streamed completion and yield its events; a silence longer than the request timeout
        fails it on this worker."""
        try:
            with worker.busy():
                async with self.session.post(f"{worker.url}/v1/completions", json=body) as response:
                    await _raise_for_status(response)
                    while line := await _until_down(worker, response.content.readline()):
                        worker.last_progress = time.monotonic()
                        event = line.decode().strip()
                        if event.startswith("data: ") and event != "data: [DONE]":
                            yield json.loads(event.removeprefix("data: "))
                    if worker.down.is_set():
                        raise WorkerFailed("worker went down during the stream")
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
        ) as response:
            await _raise_for_status(response)
            return dict(json.loads(await response.read()))


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


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    message = (await response.text())[:500]
    if response.status == 404:
        raise WorkerCannotServe(f"HTTP 404: {message}")
    # The request itself is wrong (vLLM's validation): every worker would refuse it alike.
    if response.status in (400, 422):
        raise InvalidRequestError(f"The worker refused the request: {message}")
    if response.status >= 500:
        raise WorkerFailed(f"HTTP {response.status}: {message}")
    raise EngineError(f"The worker answered HTTP {response.status}: {message}")
