"""Running several async iterators as one: the choices of an ``n > 1`` request, side by side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

__all__ = ["merge"]

T = TypeVar("T")


async def merge(iterators: Sequence[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Yield items of all ``iterators`` as they come. The first error is raised at once, and
    leaving early (an error, or the consumer's cancellation) cancels every producer, so the engine
    requests behind them are aborted rather than left running."""
    if len(iterators) == 1:
        async for item in iterators[0]:
            yield item
        return

    # Each producer puts (True, item) per item, then (False, None) or (False, its exception).
    queue: asyncio.Queue[tuple[bool, object]] = asyncio.Queue()

    async def pump(iterator: AsyncIterator[T]) -> None:
        try:
            async for item in iterator:
                await queue.put((True, item))
        except Exception as exc:
            await queue.put((False, exc))
        else:
            await queue.put((False, None))

    tasks = [asyncio.create_task(pump(it)) for it in iterators]
    try:
        running = len(tasks)
        while running:
            is_item, value = await queue.get()
            if is_item:
                yield value  # type: ignore[misc]
            elif isinstance(value, Exception):
                raise value
            else:
                running -= 1
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
