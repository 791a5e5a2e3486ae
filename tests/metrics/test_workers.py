"""The workers' collector: the remote pool's snapshot, as the powerserve_worker_* metric families
that the dashboard queries (the names, types and labels of the metric objects it replaced)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.engines.remote.pool import WorkerPool
from service.metrics import REGISTRY, register_worker_pool
from service.metrics.workers import WORKER_POOL, WorkerPoolCollector


def scrape(registry: CollectorRegistry) -> dict[str, tuple[str, dict[tuple[str, str], float]]]:
    """Family name -> (type, {(sample name, worker label): value}), for the workers' families."""
    return {
        family.name: (family.type, {(s.name, s.labels["worker"]): s.value for s in family.samples})
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        if family.name.startswith("powerserve_worker_")
    }


def test_the_snapshot_is_exported_at_scrape_time() -> None:
    pool = WorkerPool(["http://127.0.0.1:9000", "http://127.0.0.1:9001"], affinity_slots=4)
    up, down = pool.workers
    registry = CollectorRegistry()
    registry.register(WorkerPoolCollector(pool.snapshot))
    up.mark_up()
    up.prefix_cache_hit_ratio = 0.75
    down.mark_up()
    down.mark_down("refused")
    with up.busy(), up.busy():
        found = scrape(registry)
    a, b = "0", "1"  # the workers' indexes, never their URLs
    assert found == {
        "powerserve_worker_up": (
            "gauge",
            {("powerserve_worker_up", a): 1, ("powerserve_worker_up", b): 0},
        ),
        "powerserve_worker_requests_in_flight": (
            "gauge",
            {
                ("powerserve_worker_requests_in_flight", a): 2,
                ("powerserve_worker_requests_in_flight", b): 0,
            },
        ),
        "powerserve_worker_requests": (
            "counter",
            {("powerserve_worker_requests_total", a): 2, ("powerserve_worker_requests_total", b): 0},
        ),
        "powerserve_worker_failures": (
            "counter",
            {("powerserve_worker_failures_total", a): 0, ("powerserve_worker_failures_total", b): 1},
        ),
        # Only for a worker whose ratio is known.
        "powerserve_worker_prefix_cache_hit_ratio": (
            "gauge",
            {("powerserve_worker_prefix_cache_hit_ratio", a): 0.75},
        ),
    }
    assert (
        scrape(registry)["powerserve_worker_requests_in_flight"][1][
            ("powerserve_worker_requests_in_flight", a)
        ]
        == 0
    )  # read again at the next scrape


def test_the_service_registry_declares_the_families_before_any_pool() -> None:
    names = {family.name for family in REGISTRY.collect()}
    assert {"powerserve_worker_up", "powerserve_worker_requests", "powerserve_worker_failures"} <= names


def test_a_registered_pool_replaces_the_last() -> None:
    pool = WorkerPool(["http://127.0.0.1:9000"], affinity_slots=4)
    before = WORKER_POOL.snapshot
    try:
        register_worker_pool(pool.snapshot)
        assert scrape(REGISTRY)["powerserve_worker_up"][1] == {("powerserve_worker_up", "0"): 0}
    finally:
        register_worker_pool(before)


def test_the_registry_refuses_a_second_metric_of_the_same_name() -> None:
    registry = CollectorRegistry()
    registry.register(WorkerPoolCollector())
    with pytest.raises(ValueError, match="Duplicated"):
        Gauge("powerserve_worker_up", "again", registry=registry)
