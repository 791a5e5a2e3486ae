"""Teacher and evaluation requests run in a task group: the first failure stops the others, so a
failed fine-tuning job leaves no requests running for nobody."""

from __future__ import annotations

import asyncio

import pytest

from service.distill.teacher import run_bounded


def test_the_first_failure_cancels_the_rest() -> None:
    started: list[int] = []
    finished: list[int] = []

    async def job(i: int) -> dict:
        started.append(i)
        if i == 3:
            raise ValueError("prompt 3 cannot be answered")
        await asyncio.sleep(0.05 * i)
        return {"i": i}

    async def run() -> None:
        await run_bounded(
            [lambda i=i: job(i) for i in range(50)],
            concurrency=4,
            on_done=lambda record: finished.append(record["i"]),
            description="test",
        )

    with pytest.raises(ValueError, match="prompt 3"):
        asyncio.run(run())
    # Only the jobs already running when 3 failed had started, and none finished after it.
    assert len(started) <= 8 and set(finished) <= {0, 1, 2}


def test_every_result_is_handed_on_when_none_fails() -> None:
    finished: list[int] = []

    async def job(i: int) -> dict:
        await asyncio.sleep(0)
        return {"i": i}

    asyncio.run(
        run_bounded(
            [lambda i=i: job(i) for i in range(20)],
            concurrency=3,
            on_done=lambda record: finished.append(record["i"]),
            description="test",
        )
    )
    assert sorted(finished) == list(range(20))
