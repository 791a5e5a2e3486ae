"""Files and batches in Redis, shared by every gateway replica that names the same Redis
(``POWERSERVE_JOBS_REDIS_URL``): a batch created on one replica is answered by all of them, and
finished by the others when one dies.

    powerserve:jobs:seq                     counter that orders files and batches (lists page by it)
    powerserve:jobs:file:<id>               hash: the file's record
    powerserve:jobs:file:<id>:content       string: its bytes
    powerserve:jobs:files                   sorted set: file ids by seq
    powerserve:jobs:batch:<id>              hash: the batch's record (status, times, counts, ...)
    powerserve:jobs:batches                 sorted set: batch ids by seq
    powerserve:jobs:batches:active          sorted set: batches not final, by seq
    powerserve:jobs:batch:<id>:lines        stream: one entry per line, consumer group "workers"
    powerserve:jobs:batch:<id>:results      hash: line index -> {"ok", "result"}, written once

A replica claims lines by reading the stream in the group (XREADGROUP); an entry stays in that
replica's pending list until its line is recorded (XACK in the same script as the result). A live
replica renews its claims (XCLAIM ... JUSTID) every third of the claim timeout; an entry idle for
longer belongs to a replica that died, and the next replica to look takes it over (XAUTOCLAIM).
A result is written with HSETNX and only while the batch is in progress, so a line answered by two
replicas (one was only slow) is recorded once, and none is recorded after a cancel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import ResourceNotFoundError, StateUnavailableError
from service.jobs.store import (
    BATCH_TIMES,
    BatchLine,
    BatchRecord,
    FileRecord,
    new_file_id,
    now,
)
from service.metrics import record

__all__ = ["RedisJobStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "powerserve:jobs:"
GROUP = "workers"
FINAL_STATUSES = ("completed", "failed", "cancelled", "expired")

# KEYS: batch hash, active set, lines stream, results hash.
# ARGV: status, "1" when final, n, n statuses it may move from (none: any), then field/value pairs
# ("" deletes a field). Returns 1 when it moved the batch. A final batch leaves its queue.
_SET_STATUS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local n = tonumber(ARGV[3])
if n > 0 then
  local allowed = false
  for i = 4, 3 + n do
    if ARGV[i] == current then allowed = true end
  end
  if not allowed then return 0 end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 4 + n, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
  redis.call('DEL', KEYS[3], KEYS[4])
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
def _reachable() -> Iterator[None]:
    """Redis down or slow is a 503 for the caller (and a retry for the worker), not a 500."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise StateUnavailableError(f"The job store (Redis) cannot be reached: {exc}") from exc


def _fields(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}


def _number(fields: dict[str, str], name: str) -> int | None:
    return int(fields[name]) if fields.get(name) else None


def _file(raw: dict[bytes, bytes]) -> FileRecord | None:
    if not raw:
        return None
    f = _fields(raw)
    return FileRecord(
        f["id"], int(f["bytes"]), int(f["created_at"]), f["filename"], f["purpose"], f["status"]
    )


def _batch(raw: dict[bytes, bytes]) -> BatchRecord | None:
    if not raw:
        return None
    f = _fields(raw)
    return BatchRecord(
        id=f["id"],
        status=f["status"],
        input_file_id=f["input_file_id"],
        endpoint=f["endpoint"],
        completion_window=f["completion_window"],
        created_at=int(f["created_at"]),
        metadata=json.loads(f["metadata"]) if f.get("metadata") else None,
        times={name: _number(f, name) for name in BATCH_TIMES},
        output_file_id=f.get("output_file_id") or None,
        error_file_id=f.get("error_file_id") or None,
        errors=json.loads(f["errors"]) if f.get("errors") else None,
        total=int(f.get("total", 0)),
        completed=int(f.get("completed", 0)),
        failed=int(f.get("failed", 0)),
    )


def _line(entry_id: bytes, raw: dict[bytes, bytes]) -> BatchLine:
    f = _fields(raw)
    return BatchLine(int(f["idx"]), f["custom_id"], json.loads(f["body"]), claim=entry_id.decode())


def _stored(value: Any) -> str:
    """A field's value as the hash keeps it ("" for none, JSON for structures)."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


class RedisJobStore:
    """Files and batches in a Redis that gateway replicas share; this process claims lines as one
    consumer of each batch's stream."""

    def __init__(self, url: str, *, claim_timeout_s: float = 60.0, timeout_s: float = 10.0):
        # Any: redis-py's types do not follow decode_responses (replies here are always bytes).
        self._redis: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.claim_timeout_ms = max(1, int(claim_timeout_s * 1000))
        self.claim_renewal_s: float | None = claim_timeout_s / 3
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._set_status = self._redis.register_script(_SET_STATUS)
        self._finish_line = self._redis.register_script(_FINISH_LINE)

    async def check(self) -> None:
        """Refuse a Redis that may evict job state (the response cache's allkeys-* policies). One
        that cannot be reached yet is not refused: files and batches answer 503 until it is back,
        and interactive traffic is served meanwhile."""
        try:
            with _reachable():
                policy = (await self._redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        except StateUnavailableError as exc:
            logger.warning("%s; files and batches answer 503 until it is back", exc.message)
            return
        except ResponseError:  # CONFIG is disabled on some managed Redis services
            logger.warning("cannot read the job store's maxmemory-policy; make sure it never evicts")
            return
        policy = policy.decode() if isinstance(policy, bytes) else str(policy or "")
        if policy.startswith("allkeys-"):
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

    async def _next_seq(self) -> int:
        return int(await self._redis.incr(f"{PREFIX}seq"))

    # --- files ---------------------------------------------------------------------------------

    async def add_file(
        self, content: bytes, *, filename: str, purpose: str, file_id: str | None = None
    ) -> FileRecord:
        record = FileRecord(
            file_id or new_file_id(), len(content), now(), filename, purpose, "processed"
        )
        key = self._file_key(record.id)
        with _reachable():
            seq = await self._next_seq()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{key}:content", content)
                pipe.hset(key, mapping={**dataclasses.asdict(record), "seq": seq})
                pipe.zadd(f"{PREFIX}files", {record.id: seq})
                await pipe.execute()
        return record

    async def get_file(self, file_id: str) -> FileRecord | None:
        with _reachable():
            return _file(await self._redis.hgetall(self._file_key(file_id)))

    async def list_files(
        self, *, purpose: str | None, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[FileRecord], bool]:
        def wanted(file: FileRecord) -> bool:
            return purpose is None or file.purpose == purpose

        return await self._page(f"{PREFIX}files", self._file_key, _file, limit, after, ascending, wanted)

    async def read_content(self, file_id: str) -> bytes:
        with _reachable():
            content = await self._redis.get(f"{self._file_key(file_id)}:content")
        if content is None:
            raise ResourceNotFoundError("file", file_id, param="file_id")
        return bytes(content)

    async def delete_file(self, file_id: str) -> bool:
        key = self._file_key(file_id)
        with _reachable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.delete(f"{key}:content")
                pipe.zrem(f"{PREFIX}files", file_id)
                deleted, *_ = await pipe.execute()
        return bool(deleted)

    # --- batches -------------------------------------------------------------------------------

    async def add_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        window_s: int,
        metadata: dict[str, str] | None,
    ) -> BatchRecord:
        batch_id = f"batch_{uuid.uuid4().hex}"
        created = now()
        fields = {
            "id": batch_id,
            "status": "validating",
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
            "metadata": _stored(metadata),
            "created_at": created,
            "expires_at": created + window_s,
            "total": 0,
            "completed": 0,
            "failed": 0,
        }
        with _reachable():
            seq = await self._next_seq()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._batch_key(batch_id), mapping={**fields, "seq": seq})
                pipe.zadd(f"{PREFIX}batches", {batch_id: seq})
                pipe.zadd(f"{PREFIX}batches:active", {batch_id: seq})
                await pipe.execute()
        return await self.get_batch(batch_id)  # type: ignore[return-value]

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        with _reachable():
            return _batch(await self._redis.hgetall(self._batch_key(batch_id)))

    async def list_batches(self, *, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """Newest first, as OpenAI lists them."""
        return await self._page(f"{PREFIX}batches", self._batch_key, _batch, limit, after, False)

    async def active_batches(self) -> list[BatchRecord]:
        """Batches not yet final, oldest first."""
        with _reachable():
            ids = await self._redis.zrange(f"{PREFIX}batches:active", 0, -1)
            batches = await self._load([i.decode() for i in ids], self._batch_key, _batch)
        return [batch for batch in batches if batch is not None]

    async def set_status(
        self, batch_id: str, status: str, *, only_from: Sequence[str] | None = None, **fields: Any
    ) -> BatchRecord | None:
        values = dict(fields)
        stamp = f"{status}_at"
        if stamp in BATCH_TIMES:
            values.setdefault(stamp, now())
        key = self._batch_key(batch_id)
        args: list[Any] = [
            status,
            int(status in FINAL_STATUSES),
            len(only_from or ()),
            *(only_from or ()),
        ]
        for name, value in values.items():
            args += [name, _stored(value)]
        keys = [key, f"{PREFIX}batches:active", f"{key}:lines", f"{key}:results"]
        with _reachable():
            moved = await self._set_status(keys=keys, args=args)
        return await self.get_batch(batch_id) if moved else None

    async def start_batch(self, batch_id: str, lines: Sequence[BatchLine]) -> BatchRecord | None:
        """validating -> in_progress and every line queued, in one transaction: a replica that
        validated the same batch at the same time finds it started and queues nothing."""
        key = self._batch_key(batch_id)
        with _reachable():
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

    # --- claims --------------------------------------------------------------------------------

    async def claim_lines(self, batch_id: str, count: int) -> list[BatchLine]:
        """Lines never claimed first, then lines whose claim went stale (their replica died)."""
        stream = f"{self._batch_key(batch_id)}:lines"
        if count <= 0:
            return []
        with _reachable():
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
                if "NOGROUP" in str(exc):
                    return []  # the batch went final meanwhile: its queue is gone
                raise
        if stale:
            record.batch_lines_taken_over(len(stale))
            logger.warning("batch %s: took over %d lines from a stale claim", batch_id, len(stale))
        return [_line(entry_id, raw) for entry_id, raw in entries + stale if raw]

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
        with _reachable(), contextlib.suppress(ResponseError):  # NOGROUP: the batch is final
            await self._redis.xclaim(
                f"{self._batch_key(batch_id)}:lines",
                GROUP,
                self.consumer,
                min_idle_time=0,
                message_ids=ids,
                idle=idle_ms,
                justid=True,
            )

    async def finish_line(
        self, batch_id: str, line: BatchLine, *, ok: bool, result: dict[str, Any]
    ) -> bool:
        key = self._batch_key(batch_id)
        value = json.dumps({"ok": ok, "result": result})
        counter = "completed" if ok else "failed"
        with _reachable():
            recorded = await self._finish_line(
                keys=[f"{key}:results", key, f"{key}:lines"], args=[line.idx, value, counter, line.claim]
            )
        return bool(recorded)

    async def pending_lines(self, batch_id: str) -> list[BatchLine]:
        """Lines without a result, whoever claims them."""
        key = self._batch_key(batch_id)
        with _reachable():
            entries = await self._redis.xrange(f"{key}:lines")
            answered = {int(idx) for idx in await self._redis.hkeys(f"{key}:results")}
        lines = [_line(entry_id, raw) for entry_id, raw in entries]
        return [line for line in lines if line.idx not in answered]

    async def results(self, batch_id: str) -> list[tuple[bool, dict[str, Any]]]:
        """Each answered line's (ok, output line), in input order."""
        with _reachable():
            raw = await self._redis.hgetall(f"{self._batch_key(batch_id)}:results")
        values = [json.loads(value) for _, value in sorted(raw.items(), key=lambda kv: int(kv[0]))]
        return [(bool(value["ok"]), value["result"]) for value in values]

    # --- lists ---------------------------------------------------------------------------------

    async def _load(
        self,
        ids: Sequence[str],
        key: Callable[[str], str],
        build: Callable[[dict[bytes, bytes]], T | None],
    ) -> list[T | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for record_id in ids:
                pipe.hgetall(key(record_id))
            return [build(raw) for raw in await pipe.execute()]

    async def _page(
        self,
        index: str,
        key: Callable[[str], str],
        build: Callable[[dict[bytes, bytes]], T | None],
        limit: int,
        after: str | None,
        ascending: bool,
        keep: Callable[[T], bool] | None = None,
    ) -> tuple[list[T], bool]:
        """One page of the records in ``index`` after the one with id ``after`` (all when unknown),
        and whether more follow."""
        found: list[T] = []
        with _reachable():
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
