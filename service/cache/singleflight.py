"""Single-flight: identical concurrent requests are computed once, the rest wait for that result.

One caller leads (computes); the others ``wait`` for its result. A leader that fails or is cancelled
(its client left) passes nothing on: a waiter then leads in its place, so no request inherits another
client's disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[T]] = {}

    def running(self, key: str) -> bool:
        return key in self._running

    async def wait(self, key: str) -> T | None:
        """The result of the computation running for ``key``, or None if there is none (any more)
        or it failed. Call ``lead`` right after a None, with no await in between."""
        while (running := self._running.get(key)) is not None:
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise  # this waiter's own client left
            except Exception:
                pass  # the leader failed: failures are not shared
        return None

    @contextmanager
    def lead(self, key: str) -> Iterator[asyncio.Future[T]]:
        """Register as the computation for ``key``; set the yielded future's result when done."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            yield future
        finally:
            if not future.done():
                future.cancel()  # left without a result: waiters take over
            if self._running.get(key) is future:
                del self._running[key]

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, shared): ``shared`` when another caller's computation was reused."""
        shared = await self.wait(key)
        if shared is not None:
            return shared, True
        with self.lead(key) as future:
            result = await compute()
            future.set_result(result)
        return result, False
