"""The pool of workers: what the gateway knows of each, and which one a request goes to.

Routing: requests with an ``affinity`` (the steps of one MCMC chain) stick to one worker, whose prefix
cache holds the chain's prefix; everything else, and every new chain, goes to the least-loaded healthy
worker.

Workers are known outside the gateway's log by their index in the configured list (``worker="0"`` on
/metrics), never by their URL: a URL names hosts and ports, maybe credentials. The log says once, at
start-up, which index is which URL (``RemoteEngine.start``), with any credentials left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from service.errors import EngineUnavailableError

__all__ = ["WorkerPool", "WorkerSnapshot", "WorkerState", "loggable_url"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkerState:
    """What the gateway knows of one worker; the health monitor and the requests update it."""

    url: str
    # Its place in the configured list: its name on /metrics (WorkerSnapshot) and in the log.
    index: int = 0
    healthy: bool = False
    in_flight: int = 0
    max_model_len: int | None = None
    # When the health monitor probes this worker next (for Retry-After while none is healthy).
    next_check: float = 0.0
    # When the worker last answered anything, and how many probes in a row timed out since.
    last_progress: float = 0.0
    late_probes: int = 0
    # Set while the worker is down: requests waiting on it give up and go elsewhere.
    down: asyncio.Event = field(default_factory=asyncio.Event)
    # Cumulative counts and the last scraped ratio, exported as metrics (WorkerSnapshot).
    requests: int = 0
    failures: int = 0
    prefix_cache_hit_ratio: float | None = None

    def __post_init__(self) -> None:
        self.down.set()  # down until its first probe passes

    @property
    def name(self) -> str:
        """The worker in the log: its index and its URL without credentials."""
        return f"worker {self.index} ({loggable_url(self.url)})"

    def mark_up(self) -> None:
        if not self.healthy:
            logger.info("%s is healthy", self.name)
        if self.down.is_set():
            self.down = asyncio.Event()  # a fresh, unset event for the requests to come
        self.healthy, self.late_probes = True, 0

    def mark_down(self, reason: str) -> None:
        if self.healthy:
            logger.warning("%s is down (%s); its requests move to other workers", self.name, reason)
            self.failures += 1
        self.healthy, self.late_probes = False, 0
        self.down.set()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Count a request against the worker's load while it runs."""
        self.in_flight += 1
        self.requests += 1
        try:
            yield
        finally:
            self.in_flight -= 1


@dataclass(frozen=True)
class WorkerSnapshot:
    """One worker as the metrics see it (service/metrics/workers.py): a copy, read at scrape time. The
    worker is its index in the configured list, not its URL."""

    index: int
    up: bool
    in_flight: int
    requests: int
    failures: int
    prefix_cache_hit_ratio: float | None


class WorkerPool:
    """The workers of one engine, and the chains' affinity to them (the most recent chains')."""

    def __init__(self, urls: Sequence[str], *, affinity_slots: int):
        if not urls:
            raise ValueError("a worker pool needs at least one worker URL")
        self.workers = [WorkerState(url.rstrip("/"), index=i) for i, url in enumerate(urls)]
        self._affinity: OrderedDict[str, WorkerState] = OrderedDict()
        self._affinity_slots = affinity_slots

    def healthy(self) -> list[WorkerState]:
        return [worker for worker in self.workers if worker.healthy]

    def pick(
        self,
        affinity: str | None,
        avoid: Collection[WorkerState] = (),
        exclude: Collection[WorkerState] = (),
    ) -> WorkerState:
        """The affinity's worker if it is healthy, else the least-loaded healthy worker, preferring
        those this request has not failed on yet (``avoid``) and never one in ``exclude``."""
        if (
            affinity is not None
            and (worker := self._affinity.get(affinity)) is not None
            and worker.healthy
            and worker not in avoid
            and worker not in exclude
        ):
            self._affinity.move_to_end(affinity)
            return worker
        usable = [w for w in self.healthy() if w not in exclude]
        if not usable:
            raise EngineUnavailableError(
                "No worker can serve requests now.", retry_after=self.retry_after()
            )
        usable = [w for w in usable if w not in avoid] or usable
        least = min(w.in_flight for w in usable)
        worker = random.choice([w for w in usable if w.in_flight == least])
        if affinity is not None:
            self._affinity[affinity] = worker
            if len(self._affinity) > self._affinity_slots:
                self._affinity.popitem(last=False)  # chains long finished
        return worker

    def retry_after(self) -> float:
        """Seconds until some worker is probed again: when a client may retry."""
        return max(1.0, min(w.next_check for w in self.workers) - time.monotonic())

    def snapshot(self) -> list[WorkerSnapshot]:
        return [
            WorkerSnapshot(
                index=w.index,
                up=w.healthy,
                in_flight=w.in_flight,
                requests=w.requests,
                failures=w.failures,
                prefix_cache_hit_ratio=w.prefix_cache_hit_ratio,
            )
            for w in self.workers
        ]


def loggable_url(url: str) -> str:
    """``url`` without the user and password it may carry."""
    try:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:
        return "<unparsable URL>"
