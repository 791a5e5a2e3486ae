"""Requests and engine tokens per minute per key, shared by every gateway replica through Redis.

The counters are the ``limits`` library's fixed windows (``limits.aio.strategies.
FixedWindowRateLimiter``): one counter per key and kind with a 60 s expiry, started by the key's first
request of a window; on Redis an atomic ``INCRBY`` + ``EXPIRE`` script, in-process a dict. Why fixed
windows: a request is charged its worst case when admitted and given back what it did not use when
it ends, and only a plain counter can be given back to (``hit`` with a negative cost is an
``INCRBY`` of a negative amount). The moving window stores one entry per token (200,000 for one
power request) and the sliding-window counter cannot tell which of its two windows a charge went
into, so a refund there would credit the wrong one.

A charge is given back only while its window lasts: once the window has expired the charge has gone
with it (the refund is skipped rather than credited to the next window), and never more than the
window's counter holds, so no refund takes a counter below zero.

The counters must not be evicted (an evicted counter followed by a refund is free credit): they live
in the jobs Redis when one is configured, and ``check`` refuses a Redis with an ``allkeys-*`` policy.

The limiter fails open: when Redis cannot be reached, requests are admitted unlimited (not failed),
the outage is counted (``powerserve_rate_limit_errors_total``) and logged at most once a minute, and
Redis is tried again a second later; the limits hold again as soon as it answers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as redis
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError

from service.errors import RateLimitedError
from service.metrics import record
from service.redis_policy import evicting_policy

__all__ = ["Quota", "RateLimiter", "Reservation", "Window", "reset_text"]

logger = logging.getLogger(__name__)

_NAMESPACE = "powerserve"
# A refund this close to its window's end is skipped: the window may be gone when it lands.
_REFUND_MARGIN_S = 1.0


def reset_text(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass(frozen=True)
class Window:
    """One limit's state for a key: its size, what is left and when it resets (epoch seconds)."""

    limit: int
    remaining: int
    resets_at: float

    @property
    def reset_s(self) -> float:
        return max(0.0, self.resets_at - time.time())


@dataclass(frozen=True)
class Quota:
    """What a response tells the client about its limits: OpenAI's x-ratelimit-* headers."""

    requests: Window | None = None
    tokens: Window | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, window.remaining))
                headers[f"x-ratelimit-reset-{kind}"] = reset_text(window.reset_s)
        return headers


@dataclass
class Reservation:
    """Tokens charged to ``identity`` at admission, to settle when the request ends."""

    identity: str
    tokens_item: RateLimitItem | None
    reserved: int
    quota: Quota
    settled: bool = False


class RateLimiter:
    """Per-identity limits in a ``limits`` storage: Redis when ``redis_url`` is set, else memory."""

    def __init__(
        self, redis_url: str | None = None, *, timeout_s: float = 0.5, log_interval_s: float = 60
    ):
        self.storage: Storage
        if redis_url:
            self.storage = RedisStorage(
                _limits_uri(redis_url),
                wrap_exceptions=True,
                implementation="redispy",  # redis.asyncio, from the redis package we already pin
                key_prefix="powerserve-limits",
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
        else:
            self.storage = MemoryStorage()
        self.window = FixedWindowRateLimiter(self.storage)
        self.shared = redis_url is not None
        self._redis_url = redis_url
        self._log_interval_s = log_interval_s
        self._last_log = -math.inf
        self._down_until = -math.inf  # after a failure, skip the storage until then

    async def reserve(
        self, identity: str, *, rpm: int | None, tpm: int | None, tokens: int
    ) -> Reservation:
        """Count one request and reserve ``tokens``; raises ``RateLimitedError`` over a limit."""
        if tpm is not None and tokens > tpm:
            raise RateLimitedError(
                f"This request could make the engine generate up to {tokens} tokens, more than "
                f"this key's limit of {tpm} tokens per minute; lower max_tokens or n.",
                kind="tokens",
                retry_after=60,
            )
        if (rpm is None and tpm is None) or time.monotonic() < self._down_until:
            return Reservation(identity, None, 0, Quota())
        try:
            return await self._reserve(identity, rpm, tpm, tokens)
        except (StorageError, OSError, TimeoutError) as exc:
            self._storage_failed("reserve", exc)
            return Reservation(identity, None, 0, Quota())

    async def check(self) -> None:
        """Refuse counters in a Redis that may evict them (at start-up, when limits are on)."""
        if self._redis_url is None:
            return
        client = redis.from_url(self._redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            policy = await evicting_policy(client, "rate limits")
        finally:
            await client.aclose()
        if policy is not None:
            raise RuntimeError(
                f"The rate-limit counters' Redis has maxmemory-policy {policy}: an evicted counter "
                "would turn a refund into free credit. Set POWERSERVE_JOBS_REDIS_URL to a Redis "
                "that never evicts (the counters live there), or use noeviction."
            )

    async def settle(self, reservation: Reservation, used: int) -> Quota:
        """Give back what the request did not use of its reservation; the quota after that."""
        if reservation.settled or reservation.tokens_item is None:
            return reservation.quota
        reservation.settled = True
        item, identity = reservation.tokens_item, reservation.identity
        unused = reservation.reserved - max(0, used)
        tokens = reservation.quota.tokens
        if unused <= 0 or tokens is None or time.time() > tokens.resets_at - _REFUND_MARGIN_S:
            return reservation.quota
        try:
            # Never below zero: what the counter holds bounds the refund (its window may have
            # been restarted, or the counter lost, since the charge).
            before = await self.window.get_window_stats(item, identity)
            unused = min(unused, max(0, item.amount - before.remaining))
            if unused <= 0:
                return reservation.quota
            await self.window.hit(item, identity, cost=-unused)  # INCRBY -unused
            stats = await self.window.get_window_stats(item, identity)
        except (StorageError, OSError, TimeoutError) as exc:
            self._storage_failed("settle", exc)
            return reservation.quota
        window = Window(item.amount, stats.remaining, stats.reset_time)
        return Quota(reservation.quota.requests, window)

    async def close(self) -> None:
        if isinstance(self.storage, RedisStorage):
            client = getattr(self.storage.bridge, "storage", None)
            if client is not None:
                await client.aclose()

    async def _reserve(
        self, identity: str, rpm: int | None, tpm: int | None, tokens: int
    ) -> Reservation:
        requests: Window | None = None
        if rpm is not None:
            item = RateLimitItemPerMinute(rpm, namespace=f"{_NAMESPACE}/requests")
            admitted = await self.window.hit(item, identity)
            requests = await self._window(item, identity)
            if not admitted:
                raise self._over("requests", rpm, requests)
        if tpm is None:
            return Reservation(identity, None, 0, Quota(requests))
        tokens_item = RateLimitItemPerMinute(tpm, namespace=f"{_NAMESPACE}/tokens")
        admitted = await self.window.hit(tokens_item, identity, cost=tokens)
        if not admitted:
            # A refused hit still counted: give it back, or one large request would lock out
            # the small ones for the rest of the window.
            await self.window.hit(tokens_item, identity, cost=-tokens)
            raise self._over("tokens", tpm, await self._window(tokens_item, identity), tokens)
        window = await self._window(tokens_item, identity)
        return Reservation(identity, tokens_item, tokens, Quota(requests, window))

    async def _window(self, item: RateLimitItem, identity: str) -> Window:
        stats = await self.window.get_window_stats(item, identity)
        return Window(item.amount, stats.remaining, stats.reset_time)

    def _over(self, kind: str, limit: int, window: Window, asked: int = 1) -> RateLimitedError:
        per_minute = "requests per minute (RPM)" if kind == "requests" else "tokens per minute (TPM)"
        wait = max(1.0, window.reset_s)
        asked_text = f", requested {asked}" if kind == "tokens" else ""
        quota = Quota(**{kind: window})
        return RateLimitedError(
            f"Rate limit reached on {per_minute}: limit {limit}, remaining {max(0, window.remaining)}"
            f"{asked_text}. Please try again in {reset_text(wait)}.",
            kind=kind,
            retry_after=wait,
            headers=quota.headers(),
        )

    def _storage_failed(self, operation: str, exc: BaseException) -> None:
        record.rate_limit_error(operation)
        self._down_until = time.monotonic() + 1.0
        now = time.monotonic()
        if now - self._last_log >= self._log_interval_s:
            self._last_log = now
            logger.warning(
                "rate limits unavailable (%s failed: %s); requests are admitted without limits "
                "until the store answers again",
                operation,
                exc,
            )


def _limits_uri(redis_url: str) -> str:
    """limits' name for a Redis URL: async+redis://, async+rediss://, async+redis+unix://."""
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url
