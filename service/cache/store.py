"""Where cached answers live: Redis when configured, else an in-process LRU.

A cache must never make a request fail: Redis errors and timeouts are counted
(``powerserve_cache_errors_total``), logged at most once per interval, and treated as a miss or a
skipped write. The Redis client reconnects by itself when the server is back.
"""

from __future__ import annotations

import abc
import logging
import time
from collections import OrderedDict

from service.metrics import CACHE_ERRORS

__all__ = ["MemoryStore", "RedisStore", "ResponseStore"]

logger = logging.getLogger(__name__)


class ResponseStore(abc.ABC):
    """Bytes by key, each with an expiry and the time it was stored."""

    @abc.abstractmethod
    async def get(self, key: str) -> tuple[bytes, float] | None:
        """(value, unix time stored), or None when absent, expired or unreachable."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @staticmethod
    def _pack(value: bytes, stored_at: float) -> bytes:
        return f"{stored_at:.6f}\n".encode() + value

    @staticmethod
    def _unpack(raw: bytes) -> tuple[bytes, float]:
        stamp, _, value = raw.partition(b"\n")
        return value, float(stamp)


class MemoryStore(ResponseStore):
    """An LRU of at most ``max_entries`` in this process: the embedded default."""

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (packed, expiry)

    async def get(self, key: str) -> tuple[bytes, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        packed, expires = entry
        if expires <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return self._unpack(packed)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        now = time.time()
        self._entries[key] = (self._pack(value, now), now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisStore(ResponseStore):
    def __init__(self, url: str, *, timeout_s: float = 0.25, log_interval_s: float = 60.0):
        import redis.asyncio as redis

        # Short timeouts: a slow or dead Redis must cost a request milliseconds, not seconds.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._log_interval_s = log_interval_s
        self._last_logged = 0.0

    async def get(self, key: str) -> tuple[bytes, float] | None:
        try:
            raw = await self._redis.get(key)
        except Exception as exc:
            self._failed("get", exc)
            return None
        if raw is None:
            return None
        return self._unpack(raw if isinstance(raw, bytes) else raw.encode())

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        try:
            await self._redis.set(key, self._pack(value, time.time()), px=max(1, int(ttl * 1000)))
        except Exception as exc:
            self._failed("set", exc)

    async def close(self) -> None:
        await self._redis.aclose()

    def _failed(self, operation: str, exc: Exception) -> None:
        CACHE_ERRORS.labels(operation).inc()
        now = time.monotonic()
        if now - self._last_logged >= self._log_interval_s:
            self._last_logged = now
            logger.warning(
                "Redis cache unavailable (%s: %s); serving uncached, will retry", operation, exc
            )
