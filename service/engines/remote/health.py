"""The active health monitor: the judge of each worker's health.

Every worker is probed (``/health``) at an interval, and re-probed with a growing backoff while it is
down. A failed probe marks a worker down, except one that merely timed out while the worker kept
answering requests: a saturated worker on a small machine answers its probe late yet is alive, so
only ``stall_probes`` late probes in a row with nothing else answered meanwhile mark it down. A down
worker passes only when its /v1/models answer is vLLM's too, so that one marked down for answering
something else (a proxy's page on every path) is not taken back at the next probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from service.engines.remote import wire
from service.engines.remote.client import WorkerClient
from service.engines.remote.pool import WorkerState

__all__ = ["HealthMonitor"]

logger = logging.getLogger(__name__)


class _ProbeFailed(Exception):
    """The worker is down; probe it again after the backoff."""


class HealthMonitor:
    """Probes the workers in the background (``start``/``close``) and marks them up or down."""

    def __init__(
        self,
        workers: Sequence[WorkerState],
        client: WorkerClient,
        *,
        interval_s: float,
        probe_timeout_s: float,
        stall_probes: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        on_up: Callable[[WorkerState], Awaitable[None]] | None = None,
    ):
        self._workers = workers
        # Called after every passed probe (bring a worker that restarted up to date); its failure
        # is logged and costs the worker nothing.
        self._on_up = on_up
        self._client = client
        self._interval_s = interval_s
        self._probe_timeout_s = probe_timeout_s
        self._stall_probes = stall_probes
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        # One task per worker: a probe that hangs until its timeout delays no other worker's.
        self._tasks = [asyncio.create_task(self._watch(worker)) for worker in self._workers]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self, worker: WorkerState) -> None:
        def schedule(state: RetryCallState) -> None:
            worker.next_check = time.monotonic() + state.upcoming_sleep

        # While the worker is down: initial, 2x, 4x ... the backoff, up to its maximum.
        while_down = AsyncRetrying(
            retry=retry_if_exception_type(_ProbeFailed),
            wait=wait_exponential(multiplier=self._backoff_initial_s, max=self._backoff_max_s),
            before_sleep=schedule,
        )
        while True:
            async for attempt in while_down:
                with attempt:
                    await self._check(worker)
            worker.next_check = time.monotonic() + self._interval_s
            await asyncio.sleep(self._interval_s)

    async def _check(self, worker: WorkerState) -> None:
        """Probe once: return if the worker is up (or late but alive), raise if it is down."""
        probe_began = time.monotonic()
        try:
            await self._client.get(f"{worker.url}/health", timeout_s=self._probe_timeout_s)
            # A worker taken back must answer as vLLM does, not only answer: what answers every path
            # with a page (a proxy) fails here and stays down, probed with a growing backoff.
            if worker.max_model_len is None or not worker.healthy:
                models = await self._client.get(
                    f"{worker.url}/v1/models", timeout_s=self._probe_timeout_s
                )
                worker.max_model_len = wire.max_model_len(models)
        except TimeoutError as exc:
            if worker.healthy and not self._stalled(worker, since=probe_began):
                return  # late but alive: it answered requests meanwhile, or may yet
            worker.mark_down(f"health check timed out: {exc!r}")
            raise _ProbeFailed from exc
        # Any answer that is not vLLM's (a /v1/models of another shape) is a failed probe, never an
        # error that would end this worker's watch.
        except (aiohttp.ClientError, LookupError, TypeError, ValueError, RecursionError) as exc:
            worker.mark_down(f"health check failed: {exc!r}")
            raise _ProbeFailed from exc
        worker.mark_up()
        if self._on_up is not None:
            try:
                await self._on_up(worker)
            except Exception:
                logger.exception("worker %d: bringing it up to date failed", worker.index)
        # A metric only.
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, LookupError, TypeError, ValueError):
            metrics = await self._client.get(f"{worker.url}/metrics", timeout_s=self._probe_timeout_s)
            if (ratio := wire.prefix_cache_hit_ratio(metrics.decode())) is not None:
                worker.prefix_cache_hit_ratio = ratio

    def _stalled(self, worker: WorkerState, *, since: float) -> bool:
        """A timed-out probe counts against a worker only if nothing came back from it meanwhile."""
        if worker.last_progress >= since:
            worker.late_probes = 0
            return False
        worker.late_probes += 1
        return worker.late_probes >= self._stall_probes
