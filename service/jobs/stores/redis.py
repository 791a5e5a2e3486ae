"""The offline store in Redis, shared by every gateway replica that names the same Redis
(``POWERSERVE_JOBS_REDIS_URL``): a batch created on one replica is answered by all of them, and
finished by the others when one dies. Fine-tuning jobs and their events can live here too.

    powerserve:jobs:seq                          counter ordering records and events (lists page by it)
    powerserve:jobs:file:<id>                    hash: the file's record
    powerserve:jobs:file:<id>:content            string: its bytes
    powerserve:jobs:files                        sorted set: file ids by seq
    powerserve:jobs:files:expiring               sorted set: ids of files that expire, by expires_at
    powerserve:jobs:batch:<id>                   hash: the batch's record (status, times, counts, ...)
    powerserve:jobs:batches                      sorted set: batch ids by seq
    powerserve:jobs:batches:active               sorted set: batches not final, by seq
    powerserve:jobs:batch:<id>:lines             stream: one entry per line, consumer group "workers"
    powerserve:jobs:batch:<id>:results           hash: line index -> {"ok", "result"}, written once
    powerserve:jobs:fine_tuning_job:<id>         hash: the job's record
    powerserve:jobs:fine_tuning_job:<id>:events  sorted set: the job's events (JSON) by seq
    powerserve:jobs:fine_tuning_jobs             sorted set: job ids by seq
    powerserve:jobs:fine_tuning_jobs:active      sorted set: jobs not final, by seq
    powerserve:jobs:project:<project>:<kind>     sorted set: a project's files, batches or
                                                 fine_tuning_jobs (the kind), by seq

Ids are letters, digits, - and _, so no id names another key (``abc:content`` is no file).
A record without a project (written before records had owners, or without keys) is in no project's
set: only an unfiltered list shows it.

A replica claims lines by reading the stream in the group (XREADGROUP); an entry stays in that
replica's pending list until its line is recorded (XACK in the same script as the result). A live
replica renews its claims (XCLAIM ... JUSTID) every third of the claim timeout; an entry idle for
longer belongs to a replica that died, and the next replica to look takes it over (XAUTOCLAIM).
A result is written with HSETNX and only while the batch is in progress, so a line answered by two
replicas (one was only slow) is recorded once, and none is recorded after a cancel.

A Redis that cannot be reached, or that refuses a command (out of memory, read-only replica), is a
``StateUnavailableError`` (503) for the caller; its address and reply are logged, never returned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import ResourceNotFoundError, StateUnavailableError
from service.jobs.records import (
    ACTIVE_TUNING_STATUSES,
    FINAL_TUNING_STATUSES,
    BatchLine,
    BatchRecord,
    FileRecord,
    FineTuningEvent,
    FineTuningJob,
    batch_columns,
    batch_from_row,
    event_from_row,
    file_columns,
    file_from_row,
    is_record_id,
    job_columns,
    job_from_row,
    line_from_row,
    now,
)
from service.jobs.stores.base import OfflineStore
from service.redis_policy import evicting_policy

__all__ = ["RedisOfflineStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "powerserve:jobs:"
GROUP = "workers"
# Ids read per round trip when a project's files are summed.
_COUNT_CHUNK = 500

# KEYS: record hash, its kind's active set, then keys deleted when the record goes final.
# ARGV: "1" when the move makes the record final, "0" when it leaves it active, "" when the status
# stays; n, n statuses it may move from (none: any); then field/value pairs ("" deletes a field).
# Returns 1 when it changed the record.
_MOVE = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local n = tonumber(ARGV[2])
if n > 0 then
  local allowed = false
  for i = 3, 2 + n do
    if ARGV[i] == current then allowed = true end
  end
  if not allowed then return 0 end
end
for i = 3 + n, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local id = redis.call('HGET', KEYS[1], 'id')
if ARGV[1] == '1' then
  redis.call('ZREM', KEYS[2], id)
  for i = 3, #KEYS do
    redis.call('DEL', KEYS[i])
  end
elseif ARGV[1] == '0' then
  local seq = redis.call('HGET', KEYS[1], 'seq')
  if seq then redis.call('ZADD', KEYS[2], seq, id) end
end
return 1
"""

# KEYS: results hash, batch hash, lines stream. ARGV: line index, result, counter, stream entry id.
# Records the result once, while the batch is in progress; ends the claim either way.
_FINISH_LINE = """
local recorded = 0
if redis.call('HGET', KEYS[2], 'status') == 'in_progress'
    and redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  recorded = 1
end
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('XACK', KEYS[3], 'workers', ARGV[4])
end
return recorded
"""


@contextlib.contextmanager
def _available() -> Iterator[None]:
    """Redis down, slow or refusing is a 503 for the caller (and a retry for the worker), not a 500;
    what went wrong (the address, the reply) goes to the log only."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        logger.warning("the job store (Redis) cannot be reached: %s", exc)
        raise StateUnavailableError("The job store cannot be reached now; try again later.") from exc
    except ResponseError as exc:
        logger.error("the job store (Redis) refused a command: %s", exc)
        raise StateUnavailableError("The job store cannot take this now; try again later.") from exc


def _decoded(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}


def _stored(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Columns as a hash keeps them ("" for none; structures are JSON already)."""
    return {name: "" if value is None else value for name, value in columns.items()}


def _file(raw: Mapping[bytes, bytes]) -> FileRecord | None:
    return file_from_row(_decoded(raw)) if raw else None


def _batch(raw: Mapping[bytes, bytes]) -> BatchRecord | None:
    return batch_from_row(_decoded(raw)) if raw else None


def _job(raw: Mapping[bytes, bytes]) -> FineTuningJob | None:
    return job_from_row(_decoded(raw)) if raw else None


def _line(entry_id: bytes, raw: Mapping[bytes, bytes], *, taken_over: bool = False) -> BatchLine:
    return line_from_row(_decoded(raw), claim=entry_id.decode(), taken_over=taken_over)


def _is_no_group(exc: ResponseError) -> bool:
    """The batch went final meanwhile: its stream (and group) is gone."""
    return "NOGROUP" in str(exc)


class RedisOfflineStore(OfflineStore):
    """Files, batches and fine-tuning jobs in a Redis that gateway replicas share; this process
    claims lines as one consumer of each batch's stream. ``tuning_dir``: where this gateway's
    fine-tuning jobs work, when they are kept here."""

    def __init__(
        self,
        url: str,
        *,
        claim_timeout_s: float = 60.0,
        timeout_s: float = 10.0,
        tuning_dir: os.PathLike[str] | str | None = None,
    ):
        # Any: redis-py's types do not follow decode_responses (replies here are always bytes).
        self._redis: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.claim_timeout_ms = max(1, int(claim_timeout_s * 1000))
        self.claim_renewal_s = claim_timeout_s / 3
        if tuning_dir is not None:
            self.tuning_dir = Path(tuning_dir)
            self.tuning_dir.mkdir(parents=True, exist_ok=True)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._move = self._redis.register_script(_MOVE)
        self._finish_line = self._redis.register_script(_FINISH_LINE)

    async def check(self) -> None:
        """Refuse a Redis that may evict job state (the response cache's allkeys-* policies). One
        that cannot be reached yet is not refused: files and batches answer 503 until it is back,
        and interactive traffic is served meanwhile."""
        policy = await evicting_policy(
            self._redis, "the job store (files and batches answer 503 meanwhile)"
        )
        if policy is not None:
            raise RuntimeError(
                f"jobs-redis-url names a Redis with maxmemory-policy {policy}: it would evict "
                "files and batches. Use a Redis with noeviction (or volatile-*), and persistence."
            )

    async def close(self) -> None:
        await self._redis.aclose()

    # --- keys ----------------------------------------------------------------------------------

    @staticmethod
    def _file_key(file_id: str) -> str:
        return f"{PREFIX}file:{file_id}"

    @staticmethod
    def _batch_key(batch_id: str) -> str:
        return f"{PREFIX}batch:{batch_id}"

    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{PREFIX}fine_tuning_job:{job_id}"

    @staticmethod
    def _index(kind: str, project: str | None = None) -> str:
        """The sorted set of a kind's ids (files, batches, fine_tuning_jobs), or of one project's."""
        return f"{PREFIX}{kind}" if project is None else f"{PREFIX}project:{project}:{kind}"

    async def _next_seq(self) -> int:
        return int(await self._redis.incr(f"{PREFIX}seq"))

    async def _add(
        self,
        kind: str,
        key: str,
        record_id: str,
        columns: Mapping[str, Any],
        *,
        active: bool = False,
        also: Callable[[Any], None] | None = None,
    ) -> None:
        """Write a record's hash and put it in its kind's indexes (and its project's), with what
        ``also`` adds to the pipeline, in one transaction."""
        seq = await self._next_seq()
        async with self._redis.pipeline(transaction=True) as pipe:
            if also is not None:
                also(pipe)
            pipe.hset(key, mapping={**_stored(columns), "seq": seq})
            pipe.zadd(self._index(kind), {record_id: seq})
            if active:
                pipe.zadd(f"{self._index(kind)}:active", {record_id: seq})
            if (project := columns.get("project")) is not None:
                pipe.zadd(self._index(kind, project), {record_id: seq})
            await pipe.execute()

    # --- files ---------------------------------------------------------------------------------

    async def _put_file(self, record: FileRecord, content: bytes) -> None:
        key = self._file_key(record.id)
        expiring = f"{self._index('files')}:expiring"

        def also(pipe: Any) -> None:
            pipe.set(f"{key}:content", content)
            if record.expires_at is not None:
                pipe.zadd(expiring, {record.id: record.expires_at})
            else:
                pipe.zrem(expiring, record.id)

        with _available():
            await self._add("files", key, record.id, file_columns(record), also=also)

    async def get_file(self, file_id: str) -> FileRecord | None:
        if not is_record_id(file_id):
            return None
        with _available():
            return _file(await self._redis.hgetall(self._file_key(file_id)))

    async def list_files(
        self,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        ascending: bool,
        project: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        def wanted(file: FileRecord) -> bool:
            return purpose is None or file.purpose == purpose

        index = self._index("files", project)
        return await self._page(index, self._file_key, _file, limit, after, ascending, wanted)

    async def read_content(self, file_id: str) -> bytes:
        content = None
        if is_record_id(file_id):
            with _available():
                content = await self._redis.get(f"{self._file_key(file_id)}:content")
        if content is None:
            raise ResourceNotFoundError("file", file_id, param="file_id")
        return bytes(content)

    async def delete_file(self, file_id: str) -> bool:
        if not is_record_id(file_id):
            return False
        key = self._file_key(file_id)
        with _available():
            project = await self._redis.hget(key, "project")
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.delete(f"{key}:content")
                pipe.zrem(self._index("files"), file_id)
                pipe.zrem(f"{self._index('files')}:expiring", file_id)
                if project:
                    pipe.zrem(self._index("files", project.decode()), file_id)
                deleted, *_ = await pipe.execute()
        return bool(deleted)

    async def expired_files(self, now: int, limit: int) -> list[FileRecord]:
        with _available():
            ids = await self._redis.zrangebyscore(
                f"{self._index('files')}:expiring", "-inf", now, start=0, num=limit
            )
            files = await self._load([i.decode() for i in ids], self._file_key, _file)
        return [file for file in files if file is not None]

    async def project_bytes(self, project: str | None) -> int:
        """Summed over the project's index, a chunk of ids at a time (each chunk's sizes read in
        one pipeline): work in proportion to the project's files, in bounded round trips of
        bounded size. Files of no project are in no project's index: for None, every file is read
        and those with an owner skipped."""
        index = self._index("files", project)
        at = now()
        total = 0
        after = "-inf"
        with _available():
            while True:
                chunk = await self._redis.zrangebyscore(
                    index, after, "+inf", start=0, num=_COUNT_CHUNK, withscores=True
                )
                if not chunk:
                    break
                after = f"({int(chunk[-1][1])}"  # by seq: a file deleted meanwhile moves nothing
                async with self._redis.pipeline(transaction=False) as pipe:
                    for file_id, _ in chunk:
                        pipe.hmget(self._file_key(file_id.decode()), "bytes", "expires_at", "project")
                    rows = await pipe.execute()
                for size, expires_at, owner in rows:
                    gone = size is None or (expires_at and int(expires_at) <= at)
                    if not gone and (project is not None or not owner):
                        total += int(size)
                if len(chunk) < _COUNT_CHUNK:
                    break
        return total

    # --- batches -------------------------------------------------------------------------------

    async def _put_batch(self, record: BatchRecord) -> None:
        key = self._batch_key(record.id)
        with _available():
            await self._add("batches", key, record.id, batch_columns(record), active=True)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        if not is_record_id(batch_id):
            return None
        with _available():
            return _batch(await self._redis.hgetall(self._batch_key(batch_id)))

    async def list_batches(
        self, *, limit: int, after: str | None, project: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        index = self._index("batches", project)
        return await self._page(index, self._batch_key, _batch, limit, after, False)

    async def active_batches(self) -> list[BatchRecord]:
        with _available():
            ids = await self._redis.zrange(f"{self._index('batches')}:active", 0, -1)
            batches = await self._load([i.decode() for i in ids], self._batch_key, _batch)
        return [batch for batch in batches if batch is not None]

    async def active_batch_count(self, project: str | None) -> int:
        return await self._count_active("batches", self._batch_key, project)

    async def _move_batch(
        self, batch_id: str, values: dict[str, Any], *, only_from: Sequence[str], final: bool
    ) -> BatchRecord | None:
        if not is_record_id(batch_id):
            return None
        key = self._batch_key(batch_id)
        keys = [key, f"{self._index('batches')}:active", f"{key}:lines", f"{key}:results"]
        with _available():
            moved = await self._move(keys=keys, args=self._move_args(values, only_from, final))
        return await self.get_batch(batch_id) if moved else None

    @staticmethod
    def _move_args(values: Mapping[str, Any], only_from: Sequence[str], final: bool | None) -> list[Any]:
        args: list[Any] = ["" if final is None else int(final), len(only_from), *only_from]
        for name, value in _stored(values).items():
            args += [name, value]
        return args

    async def start_batch(self, batch_id: str, lines: Sequence[BatchLine]) -> BatchRecord | None:
        """validating -> in_progress and every line queued, in one transaction: a replica that
        validated the same batch at the same time finds it started and queues nothing."""
        if not is_record_id(batch_id):
            return None
        key = self._batch_key(batch_id)
        with _available():
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    if await pipe.hget(key, "status") != b"validating":
                        return None
                    pipe.multi()
                    pipe.xgroup_create(f"{key}:lines", GROUP, id="0", mkstream=True)
                    for line in lines:
                        entry = {
                            "idx": line.idx,
                            "custom_id": line.custom_id,
                            "body": json.dumps(line.body),
                        }
                        pipe.xadd(f"{key}:lines", entry)
                    pipe.hset(
                        key,
                        mapping={"status": "in_progress", "in_progress_at": now(), "total": len(lines)},
                    )
                    await pipe.execute()
            except WatchError:
                return None
        return await self.get_batch(batch_id)

    # --- batch lines ---------------------------------------------------------------------------

    async def claim_lines(self, batch_id: str, count: int) -> list[BatchLine]:
        """Lines never claimed first, then lines whose claim went stale (their replica died)."""
        stream = f"{self._batch_key(batch_id)}:lines"
        if count <= 0:
            return []
        with _available():
            try:
                fresh = await self._redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count)
                entries = list(fresh[0][1]) if fresh else []
                stale: list[Any] = []
                cursor: bytes | str = "0-0"
                while len(entries) + len(stale) < count:
                    cursor, claimed, *_ = await self._redis.xautoclaim(
                        stream,
                        GROUP,
                        self.consumer,
                        self.claim_timeout_ms,
                        start_id=cursor,
                        count=count - len(entries) - len(stale),
                    )
                    stale += claimed
                    if cursor in (b"0-0", "0-0"):
                        break
            except ResponseError as exc:
                if _is_no_group(exc):
                    return []
                raise
        if stale:
            logger.warning("batch %s: took over %d lines from a stale claim", batch_id, len(stale))
        return [_line(entry_id, raw) for entry_id, raw in entries if raw] + [
            _line(entry_id, raw, taken_over=True) for entry_id, raw in stale if raw
        ]

    async def keep_claims(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        await self._claim_again(batch_id, lines, idle_ms=None)

    async def release_lines(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        # Marked idle for the whole timeout: the next replica to look takes them at once.
        await self._claim_again(batch_id, lines, idle_ms=self.claim_timeout_ms)

    async def _claim_again(
        self, batch_id: str, lines: Sequence[BatchLine], *, idle_ms: int | None
    ) -> None:
        ids = [line.claim for line in lines if line.claim]
        if not ids:
            return
        with _available():
            try:
                await self._redis.xclaim(
                    f"{self._batch_key(batch_id)}:lines",
                    GROUP,
                    self.consumer,
                    min_idle_time=0,
                    message_ids=ids,
                    idle=idle_ms,
                    justid=True,
                )
            except ResponseError as exc:
                if not _is_no_group(exc):  # NOGROUP: the batch is final, the claims are moot
                    raise

    async def finish_line(
        self, batch_id: str, line: BatchLine, *, ok: bool, result: dict[str, Any]
    ) -> bool:
        key = self._batch_key(batch_id)
        value = json.dumps({"ok": ok, "result": result})
        counter = "completed" if ok else "failed"
        with _available():
            recorded = await self._finish_line(
                keys=[f"{key}:results", key, f"{key}:lines"], args=[line.idx, value, counter, line.claim]
            )
        return bool(recorded)

    async def pending_lines(self, batch_id: str) -> list[BatchLine]:
        key = self._batch_key(batch_id)
        with _available():
            entries = await self._redis.xrange(f"{key}:lines")
            answered = {int(idx) for idx in await self._redis.hkeys(f"{key}:results")}
        lines = [_line(entry_id, raw) for entry_id, raw in entries]
        return [line for line in lines if line.idx not in answered]

    async def results(self, batch_id: str) -> list[tuple[bool, dict[str, Any]]]:
        with _available():
            raw = await self._redis.hgetall(f"{self._batch_key(batch_id)}:results")
        values = [json.loads(value) for _, value in sorted(raw.items(), key=lambda kv: int(kv[0]))]
        return [(bool(value["ok"]), value["result"]) for value in values]

    # --- fine-tuning jobs ----------------------------------------------------------------------

    async def _put_job(self, job: FineTuningJob) -> None:
        key = self._job_key(job.id)
        with _available():
            await self._add("fine_tuning_jobs", key, job.id, job_columns(job), active=not job.final)

    async def get_job(self, job_id: str) -> FineTuningJob | None:
        if not is_record_id(job_id):
            return None
        with _available():
            return _job(await self._redis.hgetall(self._job_key(job_id)))

    async def list_jobs(
        self, *, limit: int, after: str | None, project: str | None = None
    ) -> tuple[list[FineTuningJob], bool]:
        index = self._index("fine_tuning_jobs", project)
        return await self._page(index, self._job_key, _job, limit, after, False)

    async def jobs_with_status(self, statuses: Sequence[str]) -> list[FineTuningJob]:
        index = self._index("fine_tuning_jobs")
        if all(status in ACTIVE_TUNING_STATUSES for status in statuses):
            index += ":active"  # the few jobs not final
        with _available():
            ids = await self._redis.zrange(index, 0, -1)
            jobs = await self._load([i.decode() for i in ids], self._job_key, _job)
        return [job for job in jobs if job is not None and job.status in statuses]

    async def active_job_count(self, project: str | None) -> int:
        return await self._count_active("fine_tuning_jobs", self._job_key, project)

    async def _count_active(self, kind: str, key: Callable[[str], str], project: str | None) -> int:
        """How many records of ``kind`` not final belong to ``project``: the owners of the kind's
        active set (every project's records not final, which these counts' limits keep few), read
        in one pipeline."""
        with _available():
            ids = await self._redis.zrange(f"{self._index(kind)}:active", 0, -1)
            async with self._redis.pipeline(transaction=False) as pipe:
                for record_id in ids:
                    pipe.hget(key(record_id.decode()), "project")
                owners = await pipe.execute() if ids else []
        wanted = b"" if project is None else project.encode()
        return sum(1 for owner in owners if owner == wanted)

    async def _update_job(
        self, job_id: str, values: dict[str, Any], *, only_from: Sequence[str]
    ) -> FineTuningJob | None:
        if not is_record_id(job_id):
            return None
        status = values.get("status")
        final = None if status is None else status in FINAL_TUNING_STATUSES
        keys = [self._job_key(job_id), f"{self._index('fine_tuning_jobs')}:active"]
        with _available():
            await self._move(keys=keys, args=self._move_args(values, only_from, final))
        return await self.get_job(job_id)

    async def _put_event(self, values: dict[str, Any]) -> None:
        job_id = values["job_id"]
        if not is_record_id(job_id):
            raise ValueError(f"{job_id!r} cannot be a job id")
        with _available():
            seq = await self._next_seq()
            member = json.dumps({**values, "seq": seq})
            await self._redis.zadd(f"{self._job_key(job_id)}:events", {member: seq})

    async def _events_before(
        self, job_id: str, before: int | None, limit: int
    ) -> tuple[list[FineTuningEvent], bool]:
        if not is_record_id(job_id):
            return [], False
        high = "+inf" if before is None else f"({before}"
        with _available():
            members = await self._redis.zrevrangebyscore(
                f"{self._job_key(job_id)}:events", high, "-inf", start=0, num=limit + 1
            )
        events = [event_from_row(json.loads(member)) for member in members]
        return events[:limit], len(events) > limit

    # --- lists ---------------------------------------------------------------------------------

    async def _load(
        self,
        ids: Sequence[str],
        key: Callable[[str], str],
        build: Callable[[Mapping[bytes, bytes]], T | None],
    ) -> list[T | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for record_id in ids:
                pipe.hgetall(key(record_id))
            return [build(raw) for raw in await pipe.execute()]

    async def _page(
        self,
        index: str,
        key: Callable[[str], str],
        build: Callable[[Mapping[bytes, bytes]], T | None],
        limit: int,
        after: str | None,
        ascending: bool,
        keep: Callable[[T], bool] | None = None,
    ) -> tuple[list[T], bool]:
        """One page of the records in ``index`` after the one with id ``after`` (all when it is not
        in ``index``), and whether more follow."""
        found: list[T] = []
        with _available():
            bound = await self._redis.zscore(index, after) if after is not None else None
            low = f"({bound}" if bound is not None and ascending else "-inf"
            high = f"({bound}" if bound is not None and not ascending else "+inf"
            fetch: Callable[..., Awaitable[list[bytes]]] = (
                self._redis.zrangebyscore if ascending else self._redis.zrevrangebyscore
            )
            bounds = (low, high) if ascending else (high, low)
            offset = 0
            while len(found) <= limit:
                ids = await fetch(index, *bounds, start=offset, num=limit + 1)
                if not ids:
                    break
                offset += len(ids)
                for item in await self._load([i.decode() for i in ids], key, build):
                    if item is not None and (keep is None or keep(item)):
                        found.append(item)
        return found[:limit], len(found) > limit
