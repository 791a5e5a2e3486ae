"""The benchmarks' one HTTP client, httpx, and the two things they need beyond ``httpx.Client``.

- ``Lanes``: load from many concurrent requests without the client becoming the bottleneck. One
  ``httpx.AsyncClient`` shared by many requests in flight spends the shared cores in its connection
  pool, whose bookkeeping grows with connections times waiting requests (encode/httpx#3215); on a
  2-core machine that would read as the server being slow. A lane is a client of one connection, lent
  to one request at a time and reused when it comes back: as many connections as requests in flight,
  each kept alive, no pool in common (what aiohttp's connector does, which these loops used before).
- ``request_json`` and ``upload_file``: the jobs API (files, batches, fine-tuning jobs) on a plain
  ``httpx.Client``, where the benchmarks used the openai SDK before (no retries, an HTTP error raises).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = ["Lanes", "request_json", "upload_file"]


class Lanes:
    """Single-connection ``httpx.AsyncClient``\\ s, one per request in flight, made as needed and reused.

    ``await lanes.post(url, json=body)`` sends one request on an idle lane (a new one when none is);
    ``async with lanes.lease() as client`` holds a lane for more than one call. Close with ``aclose``
    or use as an async context manager.
    """

    def __init__(self, *, base_url: str = "", timeout: float = 300) -> None:
        self._base_url = base_url
        self._timeout = timeout
        # One TLS context for all lanes: httpx builds one per client otherwise, reading the CA bundle
        # each time (seconds on busy cores), though loopback is plain HTTP.
        self._tls = httpx.create_ssl_context()
        self._idle: list[httpx.AsyncClient] = []
        self._made: list[httpx.AsyncClient] = []

    def __len__(self) -> int:
        """Lanes made so far: the most requests that were in flight at once."""
        return len(self._made)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        client = self._idle.pop() if self._idle else self._new()
        try:
            yield client
        finally:
            self._idle.append(client)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """``client.post`` on a lane; the body is read when it returns."""
        async with self.lease() as client:
            return await client.post(url, **kwargs)

    async def aclose(self) -> None:
        for client in self._made:
            await client.aclose()
        self._idle.clear()
        self._made.clear()

    async def __aenter__(self) -> Lanes:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _new(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=self._timeout,
            verify=self._tls,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,  # loopback: no proxy from the environment (nor did aiohttp take one)
        )
        self._made.append(client)
        return client


def request_json(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON body of ``client.request(method, path, ...)``; an HTTP error raises, with its body."""
    response = client.request(method, path, **kwargs)
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"{method} {path}: {response.status_code} {response.text}",
            request=response.request,
            response=response,
        )
    return response.json()


def upload_file(client: httpx.Client, filename: str, content: bytes, purpose: str) -> str:
    """POST /v1/files (multipart ``file`` and ``purpose``, as the openai SDK sends it): the file's id."""
    files = {"file": (filename, content)}
    return str(request_json(client, "POST", "/v1/files", files=files, data={"purpose": purpose})["id"])
