"""Stored responses (``store: true``, OpenAI's default): what ``GET /v1/responses/{id}``, its input
items and a later request's ``previous_response_id`` read back.

    StoredResponse          a response, the input items it answered (the whole conversation, less
                            its instructions) and the project it belongs to
    StoredResponses         the contract: save, load, delete; each entry lives ``ttl_s`` seconds
    MemoryStoredResponses   this process's: a TTL cache of at most ``max_stored`` entries (the least
                            recently used goes first)
    RedisStoredResponses    shared by gateway replicas: one key per response, expiring with it

Both keep the same JSON. A response whose JSON is larger than ``max_bytes`` is answered but not
stored (logged): it cannot be retrieved or continued. The store is the jobs' Redis when one is set
(it does not evict), else the cache's; else this process's memory. A Redis that cannot be reached is
a 503 for a read (``StateUnavailableError``, as the job store) and is logged for a save.

Named apart from ``service.cache.ResponseStore``, which keeps cached completion answers.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from cachetools import TTLCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.config import Settings
from service.errors import StateUnavailableError

__all__ = [
    "MemoryStoredResponses",
    "RedisStoredResponses",
    "StoredResponse",
    "StoredResponses",
    "build_stored_responses",
]

logger = logging.getLogger(__name__)

PREFIX = "powerserve:responses:"


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    project: str | None

    @property
    def id(self) -> str:
        return str(self.response["id"])

    def to_json(self) -> bytes:
        record = {"response": self.response, "input_items": self.input_items, "project": self.project}
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StoredResponse:
        record = json.loads(raw)
        return cls(record["response"], record["input_items"], record["project"])


class StoredResponses(abc.ABC):
    """Responses by id, each kept ``ttl_s`` seconds; one larger than ``max_bytes`` is not kept."""

    def __init__(self, *, ttl_s: float, max_bytes: int):
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    async def save(self, record: StoredResponse) -> bool:
        """Keep ``record``; False (logged) when it is too large to keep."""
        raw = record.to_json()
        if len(raw) > self.max_bytes:
            logger.warning(
                "response %s not stored: %d bytes, over the %d a stored response may take "
                "(POWERSERVE_RESPONSES_MAX_BYTES)",
                record.id,
                len(raw),
                self.max_bytes,
            )
            return False
        await self._set(record.id, raw)
        return True

    async def load(self, response_id: str) -> StoredResponse | None:
        raw = await self._get(response_id)
        return None if raw is None else StoredResponse.from_json(raw)

    @abc.abstractmethod
    async def delete(self, response_id: str) -> None: ...

    @abc.abstractmethod
    async def _set(self, response_id: str, raw: bytes) -> None: ...

    @abc.abstractmethod
    async def _get(self, response_id: str) -> bytes | None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class MemoryStoredResponses(StoredResponses):
    def __init__(self, *, ttl_s: float, max_bytes: int, max_stored: int):
        super().__init__(ttl_s=ttl_s, max_bytes=max_bytes)
        self._entries: TTLCache[str, bytes] = TTLCache(maxsize=max_stored, ttl=ttl_s)

    async def delete(self, response_id: str) -> None:
        self._entries.pop(response_id, None)

    async def _set(self, response_id: str, raw: bytes) -> None:
        self._entries[response_id] = raw

    async def _get(self, response_id: str) -> bytes | None:
        return self._entries.get(response_id)


@contextlib.contextmanager
def _available() -> Iterator[None]:
    """Redis down, slow or refusing is a 503 for the caller; what went wrong goes to the log only."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        logger.warning("the response store (Redis) cannot be reached: %s", exc)
        raise StateUnavailableError(
            "The response store cannot be reached now; try again later."
        ) from exc
    except ResponseError as exc:
        logger.error("the response store (Redis) refused a command: %s", exc)
        raise StateUnavailableError("The response store cannot take this now; try again later.") from exc


class RedisStoredResponses(StoredResponses):
    def __init__(self, url: str, *, ttl_s: float, max_bytes: int, timeout_s: float = 2.0):
        super().__init__(ttl_s=ttl_s, max_bytes=max_bytes)
        # Any: redis-py's types do not follow decode_responses (replies here are always bytes).
        self._redis: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def delete(self, response_id: str) -> None:
        with _available():
            await self._redis.delete(PREFIX + response_id)

    async def _set(self, response_id: str, raw: bytes) -> None:
        with _available():
            await self._redis.set(PREFIX + response_id, raw, px=max(1, int(self.ttl_s * 1000)))

    async def _get(self, response_id: str) -> bytes | None:
        with _available():
            raw: bytes | None = await self._redis.get(PREFIX + response_id)
        return raw

    async def close(self) -> None:
        await self._redis.aclose()


def build_stored_responses(settings: Settings) -> StoredResponses:
    """In the Redis the rate-limit counters use (the jobs' if set, else the cache's), else here."""
    ttl_s, max_bytes = settings.responses_ttl_s, settings.responses_max_bytes
    url = settings.jobs_redis_url or settings.redis_url
    if url:
        return RedisStoredResponses(url, ttl_s=ttl_s, max_bytes=max_bytes)
    return MemoryStoredResponses(
        ttl_s=ttl_s, max_bytes=max_bytes, max_stored=settings.responses_max_stored
    )
