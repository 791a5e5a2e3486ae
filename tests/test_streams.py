"""merge: several async iterators as one, failing fast and leaving no producer running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.streams import merge


async def ticks(name: str, count: int, gate: asyncio.Event | None = None) -> AsyncIterator[str]:
    for i in range(count):
        if gate is not None:
            await gate.wait()
        yield f"{name}{i}"
        await asyncio.sleep(0)


async def endless(name: str, cancelled: list[str]) -> AsyncIterator[str]:
    """Yields ``name`` until cancelled, and notes the cancellation in ``cancelled``."""
    try:
        while True:
            yield name
            await asyncio.sleep(0.001)
    except asyncio.CancelledError:
        cancelled.append(name)
        raise


def test_items_interleave_as_they_come() -> None:
    async def scenario() -> list[str]:
        return [item async for item in merge([ticks("a", 3), ticks("b", 3)])]

    items = asyncio.run(scenario())
    assert sorted(items) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert [i for i in items if i[0] == "a"] == ["a0", "a1", "a2"]  # each in its own order
    assert items.index("b0") < items.index("a2")  # b does not wait for a to finish


def test_a_slow_producer_does_not_hold_back_the_others() -> None:
    async def scenario() -> list[str]:
        gate = asyncio.Event()
        out = []
        async for item in merge([ticks("slow", 1, gate), ticks("fast", 2)]):
            out.append(item)
            if item == "fast1":
                gate.set()
        return out

    assert asyncio.run(scenario()) == ["fast0", "fast1", "slow0"]


def test_one_iterator_passes_through() -> None:
    async def scenario() -> list[str]:
        return [item async for item in merge([ticks("a", 2)])]

    assert asyncio.run(scenario()) == ["a0", "a1"]


def test_the_first_error_is_raised_and_the_others_cancelled() -> None:
    cancelled: list[str] = []

    async def failing() -> AsyncIterator[str]:
        yield "f"
        await asyncio.sleep(0.01)
        raise ValueError("first")

    async def failing_later() -> AsyncIterator[str]:
        yield "g"
        await asyncio.sleep(1)
        raise KeyError("second")

    async def scenario() -> None:
        producers = [endless("x", cancelled), failing(), failing_later(), endless("y", cancelled)]
        with pytest.raises(ValueError, match="first"):
            async for _ in merge(producers):
                pass

    asyncio.run(scenario())
    assert sorted(cancelled) == ["x", "y"]


def test_leaving_early_cancels_every_producer() -> None:
    cancelled: list[str] = []
    first = asyncio.Event()

    async def consumer() -> None:
        async for _ in merge([endless(name, cancelled) for name in "abc"]):
            first.set()
            await asyncio.sleep(10)  # the client is gone before this ends

    async def scenario() -> None:
        task = asyncio.create_task(consumer())
        await first.wait()
        await asyncio.sleep(0.01)  # every producer is past its first item
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sorted(cancelled) == ["a", "b", "c"]


def test_breaking_out_cancels_every_producer_on_close() -> None:
    cancelled: list[str] = []

    async def scenario() -> None:
        merged = merge([endless("a", cancelled), endless("b", cancelled)])
        async for _ in merged:
            break
        await merged.aclose()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert sorted(cancelled) == ["a", "b"]
