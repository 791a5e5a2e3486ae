"""The remote workers' metrics, read from the engine's pool at scrape time.

The remote engine keeps its own counts (service/engines/remote/pool.py) and imports no metric; this
collector turns a snapshot of them into the ``powerserve_worker_*`` families whenever /metrics is
scraped. ``register_worker_pool`` points it at an engine's snapshot; until then (and with the
in-process engine) the families are declared without samples.

The ``worker`` label is the worker's index in the configured list ("0", "1", ...), never its URL: a
scrape must not learn the workers' hosts, ports or credentials. The gateway logs which index is which
URL once, at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["WORKER_POOL", "WorkerPoolCollector", "WorkerStats", "register_worker_pool"]


class WorkerStats(Protocol):
    """One worker as the snapshot shows it (``service.engines.remote.WorkerSnapshot``)."""

    @property
    def index(self) -> int: ...
    @property
    def up(self) -> bool: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def prefix_cache_hit_ratio(self) -> float | None: ...


Snapshot = Callable[[], Iterable[WorkerStats]]


class WorkerPoolCollector(Collector):
    def __init__(self, snapshot: Snapshot = tuple):
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        # The names alone, so that the registry refuses another metric of the same name.
        return _families(())

    def collect(self) -> Iterable[Metric]:
        return _families(self.snapshot())


def _families(workers: Iterable[WorkerStats]) -> list[Metric]:
    up = GaugeMetricFamily(
        "powerserve_worker_up",
        "1 while a remote vLLM worker passes its health checks, else 0.",
        labels=["worker"],
    )
    in_flight = GaugeMetricFamily(
        "powerserve_worker_requests_in_flight",
        "Engine requests the gateway has in flight on each remote worker (its load).",
        labels=["worker"],
    )
    requests = CounterMetricFamily(
        "powerserve_worker_requests",
        "Engine requests sent to each remote worker.",
        labels=["worker"],
    )
    failures = CounterMetricFamily(
        "powerserve_worker_failures",
        "Times a remote worker was found down (failed request or health check); its work moved on.",
        labels=["worker"],
    )
    hit_ratio = GaugeMetricFamily(
        "powerserve_worker_prefix_cache_hit_ratio",
        "Share of prompt tokens each remote worker served from its prefix cache (vLLM's counters).",
        labels=["worker"],
    )
    for worker in workers:
        label = [str(worker.index)]
        up.add_metric(label, 1.0 if worker.up else 0.0)
        in_flight.add_metric(label, worker.in_flight)
        requests.add_metric(label, worker.requests)
        failures.add_metric(label, worker.failures)
        # Absent until the worker's first scrape that saw any prompt token.
        if worker.prefix_cache_hit_ratio is not None:
            hit_ratio.add_metric(label, worker.prefix_cache_hit_ratio)
    return [up, in_flight, requests, failures, hit_ratio]


# The collector of the service's registry (registry.py registers it).
WORKER_POOL = WorkerPoolCollector()


def register_worker_pool(snapshot: Snapshot) -> None:
    """Export these workers from now on, in place of any pool registered before."""
    WORKER_POOL.snapshot = snapshot
