"""Where cached answers live: Redis when configured, else an in-process LRU.

Stores raise ``StoreUnavailable`` when the backend fails; the request path treats that as a miss or
a skipped write (a cache must never make a request fail). The Redis client reconnects by itself when
the server is back.
"""

from __future__ import annotations

import abc
import time

from cachetools import TLRUCache

__all__ = ["MemoryStore", "RedisStore", "ResponseStore", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store's backend failed or timed out."""


class ResponseStore(abc.ABC):
    """Bytes by key, each with an expiry and the time it was stored."""

    @abc.abstractmethod
    async def get(self, key: str) -> tuple[bytes, float] | None:
        """(value, unix time stored), or None when absent or expired."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class MemoryStore(ResponseStore):
    """An LRU of at most ``max_entries`` in this process, each entry with its own time to live."""

    def __init__(self, max_entries: int = 1024):
        # Values are (bytes, stored at, ttl); an entry expires ttl seconds after it was stored.
        self._entries: TLRUCache[str, tuple[bytes, float, float]] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, value, now: now + value[2], timer=time.time
        )

    async def get(self, key: str) -> tuple[bytes, float] | None:
        entry = self._entries.get(key)
        return None if entry is None else (entry[0], entry[1])

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (value, time.time(), ttl)


class RedisStore(ResponseStore):
    def __init__(self, url: str, *, timeout_s: float = 0.25):
        import redis.asyncio as redis

        # Short timeouts: a slow or dead Redis must cost a request milliseconds, not seconds.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def get(self, key: str) -> tuple[bytes, float] | None:
        try:
            raw = await self._redis.get(key)
        except Exception as exc:
            raise StoreUnavailable(f"get: {exc}") from exc
        if raw is None:
            return None
        stamp, _, value = (raw if isinstance(raw, bytes) else raw.encode()).partition(b"\n")
        return value, float(stamp)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        packed = f"{time.time():.6f}\n".encode() + value
        try:
            await self._redis.set(key, packed, px=max(1, int(ttl * 1000)))
        except Exception as exc:
            raise StoreUnavailable(f"set: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
