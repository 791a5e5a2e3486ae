"""The response cache: keys, stores (Redis or in-process) and single-flight."""

from service.cache.keys import cache_key
from service.cache.singleflight import SingleFlight
from service.cache.store import MemoryStore, RedisStore, ResponseStore, StoreUnavailable

__all__ = [
    "MemoryStore",
    "RedisStore",
    "ResponseStore",
    "SingleFlight",
    "StoreUnavailable",
    "cache_key",
]
