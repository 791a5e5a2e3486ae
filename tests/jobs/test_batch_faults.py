"""The batch worker against a job store that fails, and its fair turns, without an engine: each line
is answered by a plain function that counts its calls. The stores are real and made to fail for
real: SQLite by triggers that refuse writes as a full disk would (chmod cannot: these tests may run
as root), or by a directory where a file's bytes should go; Redis by ``maxmemory 1`` under
``noeviction`` (every write refused, reads served) or by a key of the wrong type (one batch's writes
refused).

What must hold: a line whose result cannot be written is not answered again (its result waits in
memory, only the write is retried, with backoff); after ``store_failures`` failures in a row the
batch fails with a ``state_unavailable`` error that names nothing of the store, when the store
takes that write, and otherwise carries on once the store is back; and a batch backing off never
stalls the others."""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from loadtests.harness import RedisProcess
from service.jobs import (
    BatchLine,
    BatchRecord,
    BatchWorker,
    OfflineStore,
    RedisOfflineStore,
    SqliteOfflineStore,
)
from service.jobs.records import derived_file_id
from service.jobs.stores.redis import PREFIX
from service.jobs.worker import BackgroundWorker
from service.metrics.registry import REGISTRY

KINDS = ["sqlite", "redis"]
STORE_FAILURES = 5
CONCURRENCY = 2


@pytest.fixture(scope="module")
def faults_redis() -> Iterator[RedisProcess]:
    """A Redis of its own: the tests flush it and change its settings."""
    server = RedisProcess().start()
    yield server
    server.stop()


class Answers:
    """The engine's stand-in: a fixed body, and how many times each batch asked."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def __call__(self, batch: BatchRecord, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls[batch.id] += 1
        await asyncio.sleep(0.001)
        return 200, {"id": "cmpl-fixed", "object": "text_completion", "choices": []}


def store_errors(operation: str) -> float:
    value = REGISTRY.get_sample_value("powerserve_batch_store_errors_total", {"operation": operation})
    return value or 0.0


def open_store(kind: str, tmp_path: Path, url: str) -> OfflineStore:
    if kind == "sqlite":
        return SqliteOfflineStore(tmp_path)
    client = redis.Redis.from_url(url)
    client.config_set("maxmemory", "0")
    client.flushdb()
    return RedisOfflineStore(url)


async def started_batch(store: OfflineStore, lines: int, project: str = "p") -> str:
    """A batch in progress with ``lines`` lines (validation is not the subject here)."""
    file = await store.add_file(b"{}\n", filename="in.jsonl", purpose="batch", project=project)
    batch = await store.add_batch(
        input_file_id=file.id,
        endpoint="/v1/completions",
        completion_window="24h",
        window_s=3600,
        metadata=None,
        project=project,
    )
    body = [BatchLine(i, f"line-{i}", {"prompt": str(i)}) for i in range(lines)]
    assert await store.start_batch(batch.id, body) is not None
    return batch.id


def worker_on(store: OfflineStore, answers: Answers) -> BatchWorker:
    return BatchWorker(
        store,
        answers,
        concurrency=CONCURRENCY,
        busy_concurrency=1,
        interactive_busy=lambda: False,
        poll_s=0.01,
        turn_lines=CONCURRENCY,
        store_failures=STORE_FAILURES,
        backoff_s=0.02,
        max_backoff_s=0.16,
    )


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def status_is(store: OfflineStore, batch_id: str, status: str) -> bool:
    batch = await store.get_batch(batch_id)
    return batch is not None and batch.status == status


def assert_failed_cleanly(batch: BatchRecord | None, doing: str, secrets: list[str]) -> None:
    """Failed with one ``state_unavailable`` error that says what failed and nothing of where."""
    assert batch is not None and batch.status == "failed"
    assert batch.errors is not None and len(batch.errors) == 1
    error = batch.errors[0]
    assert error["code"] == "state_unavailable" and error["line"] is None
    assert doing in error["message"] and f"{STORE_FAILURES} times" in error["message"]
    for secret in secrets:
        assert secret not in error["message"]


# --- faults --------------------------------------------------------------------------------------


def sqlite_refuse(tmp_path: Path, *tables: str, batch_id: str | None = None) -> None:
    """Triggers (from another connection) that refuse updates and inserts of ``tables``, as a
    full disk would (of one batch's rows when ``batch_id``)."""
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        for table in tables:
            for event, row in (("UPDATE", "OLD"), ("INSERT", "NEW")):
                column = "id" if table == "batches" else "batch_id"
                when = f"WHEN {row}.{column} = '{batch_id}'" if batch_id and table != "files" else ""
                db.execute(
                    f"CREATE TRIGGER refuse_{table}_{event.lower()} BEFORE {event} ON {table} {when} "
                    "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
                )


def sqlite_recover(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        for name in names:
            db.execute(f"DROP TRIGGER {name}")


def wrong_type(url: str, key: str) -> None:
    """A key of the wrong type: Redis refuses writes of it (WRONGTYPE), and only of it."""
    client = redis.Redis.from_url(url)
    client.delete(key)
    client.set(key, "not a hash")


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_results_that_cannot_be_written_fail_their_batch_after_the_bound(
    kind: str, tmp_path: Path, faults_redis: RedisProcess
) -> None:
    """One batch's results are refused: its lines are answered once (no endless recompute), it
    fails after ``store_failures`` tries with a clear error, and the next batch of the same
    project, in the same store, completes meanwhile."""
    answers = Answers()

    async def scenario() -> None:
        store = open_store(kind, tmp_path, faults_redis.url)
        stuck = await started_batch(store, 6)
        healthy = await started_batch(store, 6)  # the same project, after it
        if kind == "sqlite":
            sqlite_refuse(tmp_path, "batch_lines", batch_id=stuck)
        else:
            wrong_type(faults_redis.url, f"{PREFIX}batch:{stuck}:results")
        recorded_before = store_errors("record")
        worker = worker_on(store, answers)
        worker.start()
        try:
            await until(lambda: status_is(store, stuck, "failed"), "the stuck batch to fail")
            await until(lambda: status_is(store, healthy, "completed"), "the healthy batch")
        finally:
            await worker.close()
        assert 0 < answers.calls[stuck] <= CONCURRENCY  # the first turn's lines, answered once
        assert answers.calls[healthy] == 6
        assert store_errors("record") - recorded_before == STORE_FAILURES
        secrets = [str(tmp_path), faults_redis.url, str(faults_redis.port), "WRONGTYPE", "disk"]
        assert_failed_cleanly(await store.get_batch(stuck), "recording its results", secrets)
        done = await store.get_batch(healthy)
        assert done is not None and (done.completed, done.failed) == (6, 0)
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_a_store_refusing_every_write_costs_no_recompute_and_the_batch_resumes(
    kind: str, tmp_path: Path, faults_redis: RedisProcess
) -> None:
    """Every write refused (failing the batch too): the lines answered before are kept, not
    answered again, past the bound; once the store takes writes, the batch completes with every
    line answered exactly once."""
    answers = Answers()
    client = redis.Redis.from_url(faults_redis.url)

    async def scenario() -> None:
        store = open_store(kind, tmp_path, faults_redis.url)
        batch_id = await started_batch(store, 6)
        before = {op: store_errors(op) for op in ("record", "fail")}
        if kind == "sqlite":
            sqlite_refuse(tmp_path, "batch_lines", "batches", "files")
        else:
            client.config_set("maxmemory", "1")  # noeviction: writes refused (OOM), reads served
        worker = worker_on(store, answers)
        worker.start()
        try:

            async def past_the_bound() -> bool:
                return (
                    store_errors("record") - before["record"] >= STORE_FAILURES + 1
                    and store_errors("fail") - before["fail"] >= 2
                )

            await until(past_the_bound, "failures past the bound")
            assert 0 < answers.calls[batch_id] <= CONCURRENCY
            assert await status_is(store, batch_id, "in_progress")  # failing it was refused too
            if kind == "sqlite":
                sqlite_recover(tmp_path)
            else:
                client.config_set("maxmemory", "0")
            await until(lambda: status_is(store, batch_id, "completed"), "the batch to complete")
        finally:
            client.config_set("maxmemory", "0")
            await worker.close()
        assert answers.calls[batch_id] == 6  # each line once: the kept results were written
        done = await store.get_batch(batch_id)
        assert done is not None and (done.completed, done.failed) == (6, 0) and not done.errors
        assert done.output_file_id is not None
        output = await store.read_content(done.output_file_id)
        custom_ids = sorted(json.loads(line)["custom_id"] for line in output.decode().splitlines())
        assert custom_ids == [f"line-{i}" for i in range(6)]
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("outcome", ["fails", "recovers"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_whose_output_cannot_be_written_backs_off_alone(
    kind: str, outcome: str, tmp_path: Path, faults_redis: RedisProcess
) -> None:
    """Finalizing one batch fails (its output file cannot be written): that batch backs off while
    a newer batch in the same store completes, its lines are not answered again, and it fails
    after the bound with a clear error, or completes once the fault is gone."""
    answers = Answers()

    async def scenario() -> None:
        store = open_store(kind, tmp_path, faults_redis.url)
        stuck = await started_batch(store, 3, project="a")
        newer = await started_batch(store, 3, project="b")
        output_id = derived_file_id(stuck, "output")
        blocker = Path(tmp_path, "files", f"{output_id}.part")
        if kind == "sqlite":
            blocker.mkdir()  # the file's bytes cannot be written where they go
        else:
            wrong_type(faults_redis.url, f"{PREFIX}file:{output_id}")
        finalize_before = store_errors("finalize")
        worker = worker_on(store, answers)
        worker.start()
        try:
            await until(lambda: status_is(store, newer, "completed"), "the other batch")
            if outcome == "fails":
                await until(lambda: status_is(store, stuck, "failed"), "the stuck batch to fail")
            else:

                async def failed_twice() -> bool:
                    return store_errors("finalize") - finalize_before >= 2

                await until(failed_twice, "two failed finalizations")
                if kind == "sqlite":
                    blocker.rmdir()
                else:
                    redis.Redis.from_url(faults_redis.url).delete(f"{PREFIX}file:{output_id}")
                await until(lambda: status_is(store, stuck, "completed"), "the batch to complete")
        finally:
            await worker.close()
        assert answers.calls == {stuck: 3, newer: 3}  # finalizing again answers nothing again
        batch = await store.get_batch(stuck)
        if outcome == "fails":
            assert store_errors("finalize") - finalize_before == STORE_FAILURES
            secrets = [str(tmp_path), faults_redis.url, str(faults_redis.port), "WRONGTYPE", ".part"]
            assert_failed_cleanly(batch, "writing its output files", secrets)
        else:
            assert batch is not None and batch.output_file_id == output_id
            assert len((await store.read_content(output_id)).splitlines()) == 3
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_whose_input_cannot_be_read_fails_after_the_bound(
    kind: str, tmp_path: Path, faults_redis: RedisProcess
) -> None:
    """Validating one batch fails (its input file's bytes cannot be read): it fails after the
    bound with a clear error, while a newer batch is validated, answered and completed."""
    answers = Answers()

    async def scenario() -> None:
        store = open_store(kind, tmp_path, faults_redis.url)
        line = {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
        ids = []
        for _ in range(2):
            file = await store.add_file(
                (json.dumps(line) + "\n").encode(), filename="in.jsonl", purpose="batch", project="p"
            )
            batch = await store.add_batch(
                input_file_id=file.id,
                endpoint="/v1/completions",
                completion_window="24h",
                window_s=3600,
                metadata=None,
                project="p",
            )
            ids.append((batch.id, file.id))
        (stuck, stuck_file), (newer, _) = ids
        if kind == "sqlite":
            content = Path(tmp_path, "files", stuck_file)
            content.unlink()
            content.mkdir()  # its bytes cannot be read
        else:
            client = redis.Redis.from_url(faults_redis.url)
            client.delete(f"{PREFIX}file:{stuck_file}:content")
            client.hset(f"{PREFIX}file:{stuck_file}:content", "not", "bytes")
        worker = worker_on(store, answers)
        worker.start()
        try:
            await until(lambda: status_is(store, stuck, "failed"), "the stuck batch to fail")
            await until(lambda: status_is(store, newer, "completed"), "the other batch")
        finally:
            await worker.close()
        assert answers.calls == {newer: 1}
        secrets = [str(tmp_path), faults_redis.url, str(faults_redis.port), "WRONGTYPE", stuck_file]
        assert_failed_cleanly(await store.get_batch(stuck), "validating its input file", secrets)
        await store.close()

    asyncio.run(scenario())


def test_kept_lines_stay_claimed_while_their_batch_backs_off(
    tmp_path: Path, faults_redis: RedisProcess
) -> None:
    """With replicas sharing Redis, the lines whose results wait in memory stay claimed while
    their batch backs off (their claims renewed, though Redis refuses writes): another replica
    is not handed them to answer again, only the lines nobody answered."""
    answers = Answers()
    client = redis.Redis.from_url(faults_redis.url)

    async def scenario() -> None:
        client.flushdb()
        store = RedisOfflineStore(faults_redis.url, claim_timeout_s=2.0)
        other = RedisOfflineStore(faults_redis.url, claim_timeout_s=2.0)  # another replica
        batch_id = await started_batch(store, 6)
        client.config_set("maxmemory", "1")
        worker = worker_on(store, answers)
        worker.start()
        try:
            await asyncio.sleep(4.5)  # more than twice the claim timeout
            taken = await other.claim_lines(batch_id, 10)
        finally:
            client.config_set("maxmemory", "0")
            await worker.close()
        assert answers.calls[batch_id] == CONCURRENCY
        assert sorted(line.idx for line in taken) == [2, 3, 4, 5]
        assert not any(line.taken_over for line in taken)
        for replica in (store, other):
            await replica.close()

    asyncio.run(scenario())


def test_closing_a_worker_survives_a_lost_cancel() -> None:
    """On Python 3.11, ``asyncio.wait_for`` (redis-py sends every command with it) drops a cancel
    that arrives as the awaited call completes; closing the worker must still end its loop
    instead of waiting forever (it hung these tests, and would hang the gateway's shutdown)."""

    class DropsOneCancel(BackgroundWorker):
        dropped = 0

        async def _pass(self) -> bool:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if self.dropped:
                    raise
                self.dropped += 1  # as 3.11's wait_for does when its call completed meanwhile
            return True

    async def scenario() -> None:
        worker = DropsOneCancel("stub worker", idle_s=0.05)
        worker.start()
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(worker.close())
        done, _ = await asyncio.wait([closing], timeout=3)
        if not done:  # cancelling close() cancels the loop a second time: the test can end
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
        assert done, "close() waited on a loop whose cancel was lost"
        assert worker.dropped == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_a_projects_small_batch_is_answered_in_its_first_turn(
    kind: str, tmp_path: Path, faults_redis: RedisProcess
) -> None:
    """Fair turns, in the order lines are answered (no clock involved): red's 40 lines came first,
    blue's 2 lines are all answered before red's third turn begins, and red's batch still ends."""

    class Ordered(Answers):
        def __init__(self) -> None:
            super().__init__()
            self.order: list[str] = []

        async def __call__(self, batch: BatchRecord, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            self.order.append(batch.project or "")
            return await super().__call__(batch, body)

    async def scenario() -> None:
        store = open_store(kind, tmp_path, faults_redis.url)
        answers = Ordered()
        large = await started_batch(store, 40, project="red")
        small = await started_batch(store, 2, project="blue")
        worker = worker_on(store, answers)
        worker.start()
        try:
            await until(lambda: status_is(store, small, "completed"), "blue's batch")
            await until(lambda: status_is(store, large, "completed"), "red's batch")
        finally:
            await worker.close()
        blue = [i for i, project in enumerate(answers.order) if project == "blue"]
        assert len(blue) == 2 and answers.order.count("red") == 40
        # Red's first turn (CONCURRENCY lines, the worker's turn_lines), then blue's.
        assert max(blue) < 2 * CONCURRENCY + 2, answers.order

    asyncio.run(scenario())
