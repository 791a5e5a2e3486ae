"""Whether a Redis may evict what is kept in it: state and counters must not live in a cache.

The response cache's Redis runs with an ``allkeys-*`` policy (compose, k8s): right for a cache, wrong
for batch state (a lost line) and for rate-limit counters (an evicted counter followed by a refund
is negative usage: free credit). Both refuse such a Redis at start-up.
"""

from __future__ import annotations

import logging

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["evicting_policy"]

logger = logging.getLogger(__name__)


async def evicting_policy(client: redis.Redis, what: str) -> str | None:
    """The ``allkeys-*`` policy of the Redis behind ``client``, or None when it keeps every key (or
    cannot be asked now: unreachable, or CONFIG disabled on a managed Redis; logged for ``what``)."""
    try:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        logger.warning("%s: Redis cannot be reached yet (%s)", what, type(exc).__name__)
        return None
    except ResponseError:
        logger.warning("%s: cannot read Redis's maxmemory-policy; make sure it never evicts", what)
        return None
    policy = policy.decode() if isinstance(policy, bytes) else str(policy or "")
    return policy if policy.startswith("allkeys-") else None
