"""The offline stores of files and batches, without an engine: SQLite (one gateway) and Redis
(replicas, against a real redis-server) keep the same contract, owners (projects) included; in
Redis, two stores are two replicas that share the lines of a batch, and one that stops renewing its
claims has its lines taken over. A Redis that is down or refuses writes is a 503 that names nothing
of the Redis."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from loadtests.harness import RedisProcess, free_port
from service.errors import ResourceNotFoundError, StateUnavailableError
from service.jobs import (
    BatchLine,
    BatchRecord,
    BatchWorker,
    OfflineStore,
    RedisOfflineStore,
    SqliteOfflineStore,
    now,
)
from service.serving.errors import status_of

LINES = [BatchLine(i, f"line-{i}", {"prompt": str(i)}) for i in range(6)]
KINDS = ["sqlite", "redis"]


@pytest.fixture(scope="module")
def jobs_redis() -> Iterator[RedisProcess]:
    """A Redis of its own: the tests flush it, and some change its settings."""
    server = RedisProcess().start()
    yield server
    server.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def open_store(kind: str, tmp_path: Path, url: str, claim_timeout_s: float = 60.0) -> OfflineStore:
    if kind == "sqlite":
        return SqliteOfflineStore(tmp_path)
    redis.Redis.from_url(url).flushdb()
    return RedisOfflineStore(url, claim_timeout_s=claim_timeout_s)


async def started_batch(store: OfflineStore, project: str | None = None) -> str:
    file = await store.add_file(b"{}\n", filename="in.jsonl", purpose="batch", project=project)
    batch = await store.add_batch(
        input_file_id=file.id,
        endpoint="/v1/completions",
        completion_window="24h",
        window_s=3600,
        metadata={"k": "v"},
        project=project,
    )
    started = await store.start_batch(batch.id, LINES)
    assert started is not None and started.status == "in_progress" and started.total == len(LINES)
    return batch.id


def result(line: BatchLine) -> dict:
    return {"custom_id": line.custom_id, "response": {"status_code": 200, "body": {}}}


@pytest.mark.parametrize("kind", KINDS)
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


@pytest.mark.parametrize("kind", KINDS)
def test_files_list_by_project_and_page_within_it(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        # a: 0, 2, 4, 6 (6 for fine-tune); b: 1, 3, 5; none: 7 (created without keys).
        files = [
            await store.add_file(
                f"{i}\n".encode(),
                filename=f"{i}.jsonl",
                purpose="fine-tune" if i == 6 else "batch",
                project=None if i == 7 else "ab"[i % 2],
            )
            for i in range(8)
        ]
        ids = [f.id for f in files]

        async def listed(**query: Any) -> tuple[list[str], bool]:
            query = {"purpose": None, "after": None, "ascending": False} | query
            page, more = await store.list_files(**query)
            return [f.id for f in page], more

        assert await listed(project="a", limit=2) == ([ids[6], ids[4]], True)
        assert await listed(project="a", limit=2, after=ids[4]) == ([ids[2], ids[0]], False)
        assert await listed(project="a", limit=3, ascending=True) == ([ids[0], ids[2], ids[4]], True)
        assert await listed(project="a", limit=3, ascending=True, after=ids[4]) == ([ids[6]], False)
        assert await listed(project="a", purpose="batch", limit=2) == ([ids[4], ids[2]], True)
        assert await listed(project="b", limit=5) == ([ids[5], ids[3], ids[1]], False)
        assert await listed(project="c", limit=5) == ([], False)
        # Another project's file is no cursor: the list starts at its beginning.
        assert await listed(project="b", limit=1, after=ids[4]) == ([ids[5]], True)
        # None: every project's, and those of none.
        assert await listed(project=None, limit=8) == (ids[::-1], False)

        # A deleted file leaves its project's list too.
        assert await store.delete_file(ids[4])
        assert await listed(project="a", limit=2) == ([ids[6], ids[2]], True)
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_records_keep_their_owner_and_expiry_but_do_not_show_the_owner(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        file = await store.add_file(
            b"x\n", filename="x.jsonl", purpose="batch", project="p1", expires_at=now() + 60
        )
        stored = await store.get_file(file.id)
        assert stored == file and stored.project == "p1" and stored.expires_at == file.expires_at
        assert "project" not in stored.to_json() and stored.to_json()["expires_at"] == file.expires_at
        plain = await store.add_file(b"y\n", filename="y.jsonl", purpose="batch")
        assert await store.get_file(plain.id) == plain and plain.project is None
        assert plain.to_json()["expires_at"] is None

        batch = await store.add_batch(
            input_file_id=file.id,
            endpoint="/v1/completions",
            completion_window="24h",
            window_s=60,
            metadata=None,
            project="p1",
            key_name="key-1",
        )
        assert await store.get_batch(batch.id) == batch
        assert (batch.project, batch.key_name) == ("p1", "key-1")
        assert not {"project", "key_name"} & set(batch.to_json())
        moved = await store.set_status(batch.id, "failed", errors=[{"code": "x"}])
        assert moved is not None and (moved.project, moved.key_name) == ("p1", "key-1")
        assert moved.errors == [{"code": "x"}] and moved.times["failed_at"] is not None
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_batches_list_by_project_newest_first(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        ids = []
        for i in range(5):
            batch = await store.add_batch(
                input_file_id="file-x",
                endpoint="/v1/completions",
                completion_window="24h",
                window_s=60,
                metadata=None,
                project="ab"[i % 2] if i < 4 else None,
            )
            ids.append(batch.id)
        page, more = await store.list_batches(limit=1, after=None, project="a")
        assert [b.id for b in page] == [ids[2]] and more
        page, more = await store.list_batches(limit=1, after=ids[2], project="a")
        assert [b.id for b in page] == [ids[0]] and not more
        page, more = await store.list_batches(limit=5, after=ids[2], project="b")
        assert [b.id for b in page] == [ids[3], ids[1]] and not more  # a's batch: no cursor for b
        page, more = await store.list_batches(limit=5, after=None)
        assert [b.id for b in page] == ids[::-1] and not more
        assert {b.id for b in await store.active_batches()} == set(ids)  # the worker's: every one
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_expired_files_come_soonest_expired_first(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        t = now()

        async def add(expires_at: int | None, file_id: str | None = None) -> str:
            file = await store.add_file(
                b"x\n", filename="x", purpose="batch", file_id=file_id, expires_at=expires_at
            )
            return file.id

        late, never, early, future = (
            await add(t - 5),
            await add(None),
            await add(t - 10),
            await add(t + 99),
        )
        assert [f.id for f in await store.expired_files(t, 10)] == [early, late]
        assert [f.id for f in await store.expired_files(t, 1)] == [early]
        assert [f.id for f in await store.expired_files(t + 100, 10)] == [early, late, future]
        # Written again without an expiry (same id): it no longer expires. Deleted: gone from it.
        await add(None, file_id=late)
        assert await store.delete_file(early)
        assert await store.expired_files(t, 10) == []
        assert never not in {f.id for f in await store.expired_files(t + 10**6, 10)}
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_an_id_that_names_a_sub_key_is_not_found(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    """GET /v1/files/abc:content must be a 404, not a 500 (WRONGTYPE) nor another key's value."""

    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        file = await store.add_file(b"x\n", filename="x.jsonl", purpose="batch")
        batch_id = await started_batch(store)
        for suffix in (":content", ":results", ":lines", "/../x", ":"):
            assert await store.get_file(file.id + suffix) is None
            assert not await store.delete_file(file.id + suffix)
            with pytest.raises((ResourceNotFoundError, FileNotFoundError)):
                await store.read_content(file.id + suffix)
            assert await store.get_batch(batch_id + suffix) is None
            assert await store.set_status(batch_id + suffix, "cancelling") is None
        assert await store.get_file(file.id) == file and await store.read_content(file.id) == b"x\n"
        with pytest.raises(ValueError):
            await store.add_file(b"y", filename="y", purpose="batch", file_id=f"{file.id}:content")
        batch = await store.get_batch(batch_id)
        assert batch is not None and batch.status == "in_progress"
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
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
        assert not any(line.taken_over for line in claimed)
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
        second = RedisOfflineStore(jobs_redis.url, claim_timeout_s=1.0)
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
        assert [line.taken_over for line in taken] == [False, False, True]  # the caller counts it
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
        store = RedisOfflineStore(jobs_redis.url)
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


def test_an_unreachable_redis_is_a_503_that_names_no_address(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    async def scenario() -> None:
        store = RedisOfflineStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        with pytest.raises(StateUnavailableError) as raised:
            await store.get_batch("batch_x")
        assert status_of(raised.value) == 503
        assert str(port) not in raised.value.message and "127.0.0.1" not in raised.value.message
        assert str(port) in caplog.text  # the operator's log has it
        await store.check()  # not refused at start-up: the gateway serves, files and batches 503
        await store.close()

    run(scenario)


@pytest.mark.parametrize("refusal", ["out of memory", "read-only"])
def test_a_redis_that_refuses_writes_is_a_503(
    refusal: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    """OOM (maxmemory reached under noeviction) and READONLY (a replica) are the store being
    unavailable for now, not a 500."""
    client = redis.Redis.from_url(jobs_redis.url)

    async def scenario() -> None:
        store = open_store("redis", tmp_path, jobs_redis.url)
        batch_id = await started_batch(store)
        file = await store.add_file(b"x\n", filename="x.jsonl", purpose="batch")
        if refusal == "out of memory":
            client.config_set("maxmemory", "1")
        else:
            client.replicaof("127.0.0.1", str(free_port()))  # a master that never answers
        try:
            attempts: list[Callable[[], Coroutine[Any, Any, Any]]] = [
                lambda: store.add_file(b"y\n", filename="y.jsonl", purpose="batch"),
                lambda: store.set_status(batch_id, "cancelling"),
                lambda: store.add_job(
                    model="m",
                    training_file=file.id,
                    suffix=None,
                    seed=0,
                    hyperparameters={},
                    metadata=None,
                ),
            ]
            for attempt in attempts:
                with pytest.raises(StateUnavailableError) as raised:
                    await attempt()
                assert status_of(raised.value) == 503
            assert await store.get_file(file.id) == file  # reads are still served
        finally:
            if refusal == "out of memory":
                client.config_set("maxmemory", "0")
            else:
                client.replicaof("NO", "ONE")
        await store.close()

    run(scenario)


# The tables as a gateway wrote them before records had owners.
_OLD_SCHEMA = """
CREATE TABLE files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT NULL
);
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, status TEXT NOT NULL,
    input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL, completion_window TEXT NOT NULL,
    metadata TEXT, created_at INTEGER NOT NULL, expires_at INTEGER, in_progress_at INTEGER,
    finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, output_file_id TEXT, error_file_id TEXT,
    errors TEXT, total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE fine_tuning_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, status TEXT NOT NULL,
    model TEXT NOT NULL, training_file TEXT NOT NULL, suffix TEXT, seed INTEGER NOT NULL,
    hyperparameters TEXT NOT NULL, metadata TEXT, created_at INTEGER NOT NULL, finished_at INTEGER,
    fine_tuned_model TEXT, adapter_dir TEXT, result_files TEXT NOT NULL DEFAULT '[]',
    trained_tokens INTEGER, error TEXT
);
INSERT INTO files (id, bytes, created_at, filename, purpose, status)
    VALUES ('file-old', 2, 1, 'old.jsonl', 'batch', 'processed');
INSERT INTO batches (id, status, input_file_id, endpoint, completion_window, created_at, expires_at)
    VALUES ('batch_old', 'completed', 'file-old', '/v1/completions', '24h', 1, 2);
INSERT INTO fine_tuning_jobs (id, status, model, training_file, seed, hyperparameters, created_at)
    VALUES ('ftjob-old', 'succeeded', 'tiny', 'file-old', 1, '{}', 1);
"""


def test_an_old_state_directory_opens_and_gains_the_owner_columns(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "file-old").write_bytes(b"{}")
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        db.executescript(_OLD_SCHEMA)

    async def scenario() -> None:
        store = SqliteOfflineStore(tmp_path)
        old_file = await store.get_file("file-old")
        assert old_file is not None and old_file.project is None and old_file.expires_at is None
        assert await store.read_content("file-old") == b"{}"
        old_batch = await store.get_batch("batch_old")
        assert old_batch is not None and old_batch.project is None and old_batch.status == "completed"
        old_job = await store.get_job("ftjob-old")
        assert old_job is not None and old_job.project is None and old_job.final
        # Old records belong to no project: listed to all, to no project.
        page, _ = await store.list_files(purpose=None, limit=5, after=None, ascending=True)
        assert [f.id for f in page] == ["file-old"]
        page, _ = await store.list_files(purpose=None, limit=5, after=None, ascending=True, project="p")
        assert page == []
        new = await store.add_file(b"n", filename="n", purpose="batch", project="p", expires_at=5)
        assert await store.get_file(new.id) == new
        await store.close()
        reopened = SqliteOfflineStore(tmp_path)  # the columns are there now: opening again is a no-op
        assert await reopened.get_file(new.id) == new
        await reopened.close()

    run(scenario)
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        for table, columns in {
            "files": {"project", "expires_at"},
            "batches": {"project", "key_name"},
            "fine_tuning_jobs": {"project", "key_name"},
        }.items():
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            assert columns <= present, table


def test_the_contract_is_abstract() -> None:
    with pytest.raises(TypeError):
        OfflineStore()  # type: ignore[abstract]


@pytest.mark.parametrize("kind", KINDS)
def test_a_batchs_output_files_belong_to_its_project(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    """The batch worker on a store, without an engine: each line answered by a stub."""

    async def answer(batch: BatchRecord, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body["prompt"] == "bad":
            return 400, {"error": {"code": "invalid", "message": "no"}}
        return 200, {"id": "cmpl-1", "owner": batch.project}

    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        lines = [
            {"custom_id": c, "method": "POST", "url": "/v1/completions", "body": {"prompt": c}}
            for c in ("good", "bad")
        ]
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file = await store.add_file(content, filename="in.jsonl", purpose="batch", project="p")
        batch = await store.add_batch(
            input_file_id=file.id,
            endpoint="/v1/completions",
            completion_window="24h",
            window_s=3600,
            metadata=None,
            project="p",
        )
        worker = BatchWorker(
            store, answer, concurrency=2, busy_concurrency=1, interactive_busy=lambda: False
        )
        for _ in range(5):
            await worker._pass()
        done = await store.get_batch(batch.id)
        assert done is not None and done.status == "completed"
        assert (done.completed, done.failed) == (1, 1)
        for file_id in (done.output_file_id, done.error_file_id):
            assert file_id is not None
            output = await store.get_file(file_id)
            assert output is not None and output.project == "p"
        page, _ = await store.list_files(
            purpose="batch_output", limit=5, after=None, ascending=True, project="p"
        )
        assert {f.id for f in page} == {done.output_file_id, done.error_file_id}
        await store.close()

    run(scenario)


# --- what the limits on new offline work ask (service/serving) ---------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_project_bytes_sum_a_projects_files_that_have_not_expired(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis reads a project's files a chunk at a time: two per chunk crosses several chunks here.
    monkeypatch.setattr("service.jobs.stores.redis._COUNT_CHUNK", 2)

    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        later, past = now() + 3600, now() - 1

        async def add(size: int, project: str | None, **kw: Any) -> str:
            file = await store.add_file(
                b"x" * size, filename="f", purpose="batch", project=project, **kw
            )
            return file.id

        first = await add(3, "p")
        await add(5, "p")
        await add(17, "p", expires_at=later)
        await add(13, "p", expires_at=past)  # expired: the sweeper's, not counted
        await add(7, "q")
        await add(11, None)
        await add(19, None, expires_at=past)
        output = await add(23, "p")
        assert await store.project_bytes("p") == 3 + 5 + 17 + 23
        assert await store.project_bytes("q") == 7
        assert await store.project_bytes(None) == 11  # the files of no project, not all files
        assert await store.project_bytes("nobody") == 0
        # A batch's output written again replaces its bytes; a deleted file counts no more.
        await store.add_file(b"y" * 2, filename="o", purpose="batch_output", file_id=output, project="p")
        await store.delete_file(first)
        assert await store.project_bytes("p") == 5 + 17 + 2
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_active_counts_are_a_projects_batches_and_jobs_not_yet_final(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        running = await started_batch(store, "p")  # in_progress
        done = await started_batch(store, "p")
        await started_batch(store, "q")
        await started_batch(store, None)
        validating = await store.add_batch(
            input_file_id="file-x",
            endpoint="/v1/completions",
            completion_window="24h",
            window_s=3600,
            metadata=None,
            project="p",
        )
        assert validating.status == "validating"
        await store.set_status(done, "completed")
        counts = [await store.active_batch_count(p) for p in ("p", "q", None, "nobody")]
        assert counts == [2, 1, 1, 0]
        await store.set_status(running, "cancelling")  # not final yet
        assert await store.active_batch_count("p") == 2
        await store.set_status(running, "cancelled")
        assert await store.active_batch_count("p") == 1

        async def job(project: str | None) -> str:
            added = await store.add_job(
                model="base",
                training_file="file-t",
                suffix=None,
                seed=1,
                hyperparameters={},
                metadata=None,
                project=project,
            )
            return added.id

        queued, succeeded, failed = await job("p"), await job("p"), await job("p")
        await job("q")
        await job(None)
        await store.update(queued, status="running")
        await store.update(succeeded, status="succeeded")
        await store.update(failed, status="failed")
        counts = [await store.active_job_count(p) for p in ("p", "q", None, "nobody")]
        assert counts == [1, 1, 1, 0]
        await store.close()

    run(scenario)
