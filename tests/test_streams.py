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

    async def endless(name: str) -> AsyncIterator[str]:
        try:
            while True:
                yield name
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def failing() -> AsyncIterator[str]:
        yield "f"
        await asyncio.sleep(0.01)
        raise ValueError("first")

    async def failing_later() -> AsyncIterator[str]:
        yield "g"
        await asyncio.sleep(1)
        raise KeyError("second")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="first"):
            async for _ in merge([endless("x"), failing(), failing_later(), endless("y")]):
                pass

    asyncio.run(scenario())
    assert sorted(cancelled) == ["x", "y"]


def test_leaving_early_cancels_every_producer() -> None:
    started: list[str] = []
    cancelled: list[str] = []

    async def producer(name: str) -> AsyncIterator[str]:
        started.append(name)
        try:
            while True:
                yield name
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def consumer() -> None:
        async for _ in merge([producer("a"), producer("b"), producer("c")]):
            await asyncio.sleep(10)  # the client is gone before this ends

    async def scenario() -> None:
        task = asyncio.create_task(consumer())
        while len(started) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sorted(cancelled) == ["a", "b", "c"]


def test_breaking_out_cancels_every_producer_on_close() -> None:
    cancelled: list[str] = []

    async def producer(name: str) -> AsyncIterator[str]:
        try:
            while True:
                yield name
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def scenario() -> None:
        merged = merge([producer("a"), producer("b")])
        async for _ in merged:
            break
        await merged.aclose()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert sorted(cancelled) == ["a", "b"]
