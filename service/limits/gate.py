"""The gate every completion request passes before the engine sees it, and settles when it ends.

    admit:   admission control (this process's engine work in flight: requests, reserved tokens)
             -> the key's requests per minute -> the key's tokens per minute (its worst case)
    release: leave the work in flight at once; give back the tokens it did not generate

Admission control is per process: it protects this replica's engine (or worker pool) from an
unbounded queue, answering 503 + Retry-After at once instead. The rate limits are per key and shared
by the replicas (service/limits/rate.py). Without keys, limits apply per client address.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from service.config import Settings
from service.errors import RateLimitedError, ServerOverloadedError
from service.limits.keys import ApiKey, KeyRing
from service.limits.rate import Quota, RateLimiter, Reservation
from service.metrics import record

__all__ = ["Admission", "Gate", "Ticket"]

logger = logging.getLogger(__name__)


class Admission:
    """Caps on the engine work in flight in this process. A request is admitted while both are
    under their cap; one alone is always admitted, however large, so that none waits forever."""

    def __init__(self, max_requests: int | None, max_tokens: int | None):
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0

    def enter(self, tokens: int) -> None:
        full = self.max_requests is not None and self.requests >= self.max_requests
        heavy = (
            self.max_tokens is not None and self.requests > 0 and self.tokens + tokens > self.max_tokens
        )
        if full or heavy:
            record.rejected("overloaded")
            what = "requests" if full else "tokens"
            raise ServerOverloadedError(
                f"The server is at its capacity ({self.requests} requests, {self.tokens} reserved "
                f"engine tokens in flight; cap on {what} reached). Please retry shortly.",
                retry_after=1,
            )
        self.requests += 1
        self.tokens += tokens

    def leave(self, tokens: int) -> None:
        self.requests -= 1
        self.tokens -= tokens


@dataclass
class Ticket:
    """An admitted request: its reservations, released once."""

    tokens: int
    reservation: Reservation
    released: bool = False

    @property
    def quota(self) -> Quota:
        return self.reservation.quota


@dataclass
class Gate:
    keys: KeyRing
    limiter: RateLimiter
    admission: Admission
    rpm: int | None = None
    tpm: int | None = None
    _settling: set[asyncio.Task[Quota]] = field(default_factory=set)

    @classmethod
    def from_settings(cls, settings: Settings) -> Gate:
        return cls(
            keys=KeyRing.from_settings(settings.api_keys, settings.api_keys_file),
            # Counters where nothing evicts them: the jobs Redis when there is one (rate.py).
            limiter=RateLimiter(settings.jobs_redis_url or settings.redis_url),
            admission=Admission(settings.max_inflight_requests, settings.max_inflight_tokens),
            rpm=settings.rate_limit_rpm,
            tpm=settings.rate_limit_tpm,
        )

    @property
    def limited(self) -> bool:
        """Whether any request can be rate-limited (the settings or a key set a limit)."""
        return bool(self.rpm or self.tpm or self.keys.has_limits)

    async def check(self) -> None:
        """At start-up: with limits on, refuse counters in a Redis that may evict them."""
        if self.limited:
            await self.limiter.check()

    def limits_for(self, key: ApiKey | None) -> tuple[int | None, int | None]:
        """A key's (rpm, tpm): its own where the keys file sets them (0: unlimited), else the
        settings'."""
        rpm = self.rpm if key is None or key.rpm is None else key.rpm
        tpm = self.tpm if key is None or key.tpm is None else key.tpm
        return rpm or None, tpm or None

    async def admit(self, identity: str, key: ApiKey | None, tokens: int) -> Ticket:
        """Admit a request that may make the engine generate up to ``tokens``; raises
        ``ServerOverloadedError`` (503) or ``RateLimitedError`` (429)."""
        self.admission.enter(tokens)
        rpm, tpm = self.limits_for(key)
        try:
            reservation = await self.limiter.reserve(identity, rpm=rpm, tpm=tpm, tokens=tokens)
        except BaseException as exc:
            self.admission.leave(tokens)
            if isinstance(exc, RateLimitedError):
                record.rejected(f"rate_limit_{exc.kind}")
            raise
        return Ticket(tokens, reservation)

    async def release(self, ticket: Ticket, used: int) -> Quota:
        """The request ended having made the engine generate ``used`` tokens."""
        if ticket.released:
            return ticket.quota
        ticket.released = True
        self.admission.leave(ticket.tokens)
        return await self.limiter.settle(ticket.reservation, used)

    def release_soon(self, ticket: Ticket, used: int) -> None:
        """``release`` from code that may not await (a cancelled request): the work in flight is
        left at once, the refund follows in a task of its own."""
        if ticket.released:
            return
        ticket.released = True
        self.admission.leave(ticket.tokens)
        task = asyncio.ensure_future(self.limiter.settle(ticket.reservation, used))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.limiter.close()
