"""SingleFlight: identical concurrent computations run once; failures and disconnects are not shared."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from service.cache import SingleFlight


def test_concurrent_runs_compute_once() -> None:
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "answer"

    async def scenario() -> list[tuple[str, bool]]:
        flight: SingleFlight[str] = SingleFlight()
        results = await asyncio.gather(*(flight.run("k", compute) for _ in range(5)))
        assert not flight.running("k")
        return results

    results = asyncio.run(scenario())
    assert calls == 1
    assert sorted(results) == [("answer", False)] + [("answer", True)] * 4


def test_other_keys_compute_apart() -> None:
    async def scenario() -> list[tuple[str, bool]]:
        flight: SingleFlight[str] = SingleFlight()

        def compute(key: str) -> Callable[[], Awaitable[str]]:
            async def run() -> str:
                await asyncio.sleep(0.01)
                return key

            return run

        return await asyncio.gather(*(flight.run(k, compute(k)) for k in "abc"))

    assert asyncio.run(scenario()) == [("a", False), ("b", False), ("c", False)]


def test_a_failed_leader_passes_nothing_on_and_a_waiter_leads() -> None:
    calls: list[str] = []

    async def scenario() -> None:
        flight: SingleFlight[str] = SingleFlight()
        leader_started = asyncio.Event()

        async def failing() -> str:
            calls.append("leader")
            leader_started.set()
            await asyncio.sleep(0.01)
            raise RuntimeError("leader failed")

        async def succeeding() -> str:
            calls.append("waiter")
            return "waiter's answer"

        leader = asyncio.create_task(flight.run("k", failing))
        await leader_started.wait()
        waiter = asyncio.create_task(flight.run("k", succeeding))
        with pytest.raises(RuntimeError, match="leader failed"):
            await leader
        assert await waiter == ("waiter's answer", False)  # computed anew, not shared

    asyncio.run(scenario())
    assert calls == ["leader", "waiter"]


def test_wait_after_a_failure_is_none() -> None:
    async def scenario() -> None:
        flight: SingleFlight[str] = SingleFlight()
        with pytest.raises(RuntimeError), flight.lead("k"):
            waiting = asyncio.create_task(flight.wait("k"))
            await asyncio.sleep(0)
            raise RuntimeError("leader failed")
        assert await waiting is None
        assert await flight.wait("k") is None  # nothing runs any more

    asyncio.run(scenario())


def test_a_cancelled_leader_hands_over_to_a_waiter() -> None:
    async def scenario() -> None:
        flight: SingleFlight[str] = SingleFlight()
        started = asyncio.Event()

        async def slow() -> str:
            started.set()
            await asyncio.sleep(10)
            return "never"

        async def fast() -> str:
            return "waiter's answer"

        leader = asyncio.create_task(flight.run("k", slow))
        await started.wait()
        waiter = asyncio.create_task(flight.run("k", fast))
        await asyncio.sleep(0)
        leader.cancel()  # the leader's client left
        assert await waiter == ("waiter's answer", False)

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_cancel_the_leader() -> None:
    async def scenario() -> None:
        flight: SingleFlight[str] = SingleFlight()
        started, release = asyncio.Event(), asyncio.Event()

        async def compute() -> str:
            started.set()
            await release.wait()
            return "answer"

        leader = asyncio.create_task(flight.run("k", compute))
        await started.wait()
        waiter = asyncio.create_task(flight.run("k", compute))
        other = asyncio.create_task(flight.wait("k"))
        await asyncio.sleep(0)
        waiter.cancel()  # this waiter's client left
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        assert await leader == ("answer", False)
        assert await other == "answer"  # the remaining waiter still gets it

    asyncio.run(scenario())
