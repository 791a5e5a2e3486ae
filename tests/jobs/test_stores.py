"""The stores of files and batches, without an engine: SQLite (one gateway) and Redis (replicas,
against a real redis-server) keep the same contract; in Redis, two stores are two replicas that
share the lines of a batch, and one that stops renewing its claims has its lines taken over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from service.api.errors import status_of
from service.errors import StateUnavailableError
from service.jobs import BatchLine, JobStore, OfflineStore, RedisJobStore
from tests.harness import RedisProcess, free_port

LINES = [BatchLine(i, f"line-{i}", {"prompt": str(i)}) for i in range(6)]


@pytest.fixture(scope="module")
def jobs_redis() -> Iterator[RedisProcess]:
    """A Redis of its own: the tests flush it, and one changes its eviction policy."""
    server = RedisProcess().start()
    yield server
    server.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def open_store(kind: str, tmp_path: Path, url: str, claim_timeout_s: float = 60.0) -> OfflineStore:
    if kind == "sqlite":
        return JobStore(tmp_path)
    redis.Redis.from_url(url).flushdb()
    return RedisJobStore(url, claim_timeout_s=claim_timeout_s)


async def started_batch(store: OfflineStore) -> str:
    file = await store.add_file(b"{}\n", filename="in.jsonl", purpose="batch")
    batch = await store.add_batch(
        input_file_id=file.id,
        endpoint="/v1/completions",
        completion_window="24h",
        window_s=3600,
        metadata={"k": "v"},
    )
    started = await store.start_batch(batch.id, LINES)
    assert started is not None and started.status == "in_progress" and started.total == len(LINES)
    return batch.id


def result(line: BatchLine) -> dict:
    return {"custom_id": line.custom_id, "response": {"status_code": 200, "body": {}}}


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_files_page_by_creation_order(kind: str, tmp_path: Path, jobs_redis: RedisProcess) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        files = [
            await store.add_file(f"{i}\n".encode(), filename=f"{i}.jsonl", purpose=purpose)
            for i, purpose in enumerate(["batch", "fine-tune", "batch", "batch"])
        ]
        page, more = await store.list_files(purpose=None, limit=2, after=None, ascending=False)
        assert [f.id for f in page] == [files[3].id, files[2].id] and more
        page, more = await store.list_files(purpose="batch", limit=5, after=files[2].id, ascending=False)
        assert [f.id for f in page] == [files[0].id] and not more
        page, more = await store.list_files(purpose="batch", limit=2, after=None, ascending=True)
        assert [f.id for f in page] == [files[0].id, files[2].id] and more
        assert await store.get_file(files[1].id) == files[1]
        assert await store.read_content(files[1].id) == b"1\n"
        assert await store.delete_file(files[1].id) and not await store.delete_file(files[1].id)
        assert await store.get_file(files[1].id) is None
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_batch_moves_once_and_each_line_is_recorded_once(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        batch_id = await started_batch(store)
        assert await store.start_batch(batch_id, LINES) is None  # started once
        assert await store.set_status(batch_id, "finalizing", only_from=("validating",)) is None

        claimed = await store.claim_lines(batch_id, 4)
        assert [line.idx for line in claimed] == [0, 1, 2, 3]
        assert [line.idx for line in await store.claim_lines(batch_id, 4)] == [4, 5]  # the rest
        assert await store.claim_lines(batch_id, 4) == []  # all held
        assert await store.finish_line(batch_id, claimed[0], ok=True, result=result(claimed[0]))
        assert not await store.finish_line(batch_id, claimed[0], ok=False, result={})  # once
        await store.finish_line(batch_id, claimed[1], ok=False, result=result(claimed[1]))
        await store.release_lines(batch_id, claimed[2:])  # given back: claimable at once
        assert [line.idx for line in await store.claim_lines(batch_id, 4)] == [2, 3]
        assert [line.idx for line in await store.pending_lines(batch_id)] == [2, 3, 4, 5]

        cancelling = await store.set_status(batch_id, "cancelling", only_from=("in_progress",))
        assert cancelling is not None and (cancelling.completed, cancelling.failed) == (1, 1)
        # After a cancel, a line that finishes late is not recorded: the files keep what came before.
        assert not await store.finish_line(batch_id, claimed[2], ok=True, result=result(claimed[2]))
        assert [ok for ok, _ in await store.results(batch_id)] == [True, False]
        cancelled = await store.set_status(batch_id, "cancelled", output_file_id="file-out")
        assert cancelled is not None and cancelled.output_file_id == "file-out"
        assert cancelled.metadata == {"k": "v"} and cancelled.times["cancelled_at"] is not None
        assert await store.active_batches() == []
        page, more = await store.list_batches(limit=5, after=None)
        assert [b.id for b in page] == [batch_id] and not more
        await store.close()

    run(scenario)


def test_replicas_share_lines_and_take_over_stale_claims(
    tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        first = open_store("redis", tmp_path, jobs_redis.url, claim_timeout_s=1.0)
        second = RedisJobStore(jobs_redis.url, claim_timeout_s=1.0)
        batch_id = await started_batch(first)
        # A batch created through one replica is seen by the other.
        assert [b.id for b in await second.active_batches()] == [batch_id]

        mine = await first.claim_lines(batch_id, 2)
        theirs = await second.claim_lines(batch_id, 2)
        assert {line.idx for line in mine} | {line.idx for line in theirs} == {0, 1, 2, 3}
        assert not {line.idx for line in mine} & {line.idx for line in theirs}

        # `first` keeps renewing one claim and lets the other go stale, as a replica that died would.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            await first.keep_claims(batch_id, mine[:1])
            await second.keep_claims(batch_id, theirs)
            await asyncio.sleep(0.2)
        taken = await second.claim_lines(batch_id, 5)
        assert [line.idx for line in taken] == [4, 5, mine[1].idx]  # new lines first, then stale
        assert mine[0].idx not in {line.idx for line in taken}  # a renewed claim is kept

        # The slow replica finishes its stale line too: the result is recorded once.
        assert await second.finish_line(batch_id, taken[-1], ok=True, result=result(taken[-1]))
        assert not await first.finish_line(batch_id, mine[1], ok=True, result=result(mine[1]))

        # A final batch leaves the queue: nothing is claimed, renewing or releasing is harmless.
        assert await first.set_status(batch_id, "cancelled") is not None
        assert await second.claim_lines(batch_id, 5) == []
        await second.keep_claims(batch_id, taken)
        await second.release_lines(batch_id, taken)
        assert not redis.Redis.from_url(jobs_redis.url).keys(f"*{batch_id}:lines")
        await first.close()
        await second.close()

    run(scenario)


def test_a_redis_that_evicts_is_refused(jobs_redis: RedisProcess) -> None:
    client = redis.Redis.from_url(jobs_redis.url)

    async def check() -> None:
        store = RedisJobStore(jobs_redis.url)
        try:
            await store.check()
        finally:
            await store.close()

    run(check)  # noeviction, redis-server's default: accepted
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(RuntimeError, match="allkeys-lru"):
            run(check)
    finally:
        client.config_set("maxmemory-policy", "noeviction")


def test_an_unreachable_redis_is_a_503_error() -> None:
    async def scenario() -> None:
        store = RedisJobStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
        with pytest.raises(StateUnavailableError) as raised:
            await store.get_batch("batch_x")
        assert status_of(raised.value) == 503
        await store.check()  # not refused at start-up: the gateway serves, files and batches 503
        await store.close()

    run(scenario)
