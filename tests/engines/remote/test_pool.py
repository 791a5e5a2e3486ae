"""Worker choice in the remote engine's pool: chains stick to their worker, new work goes to the
least-loaded healthy one, and down workers get none."""

from __future__ import annotations

import pytest

from service.engines.remote.pool import WorkerPool, WorkerState
from service.errors import EngineUnavailableError


def pool_of(count: int, *, affinity_slots: int = 16) -> WorkerPool:
    pool = WorkerPool(
        [f"http://127.0.0.1:{9000 + i}/" for i in range(count)], affinity_slots=affinity_slots
    )
    for worker in pool.workers:
        worker.mark_up()
    return pool


def test_urls_lose_their_trailing_slash() -> None:
    assert [w.url for w in pool_of(2).workers] == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]


def test_new_work_goes_to_the_least_loaded_worker() -> None:
    pool = pool_of(3)
    loads = {pool.workers[0]: 2, pool.workers[1]: 0, pool.workers[2]: 1}
    for worker, load in loads.items():
        worker.in_flight = load
    assert {pool.pick(None) for _ in range(20)} == {pool.workers[1]}


def test_ties_spread_over_the_workers() -> None:
    pool = pool_of(2)
    assert {pool.pick(None) for _ in range(50)} == set(pool.workers)


def test_a_chain_sticks_to_its_worker_even_when_it_is_busier() -> None:
    pool = pool_of(2)
    first = pool.pick("chain-1")
    first.in_flight = 10
    assert all(pool.pick("chain-1") is first for _ in range(10))
    assert pool.pick("chain-2") is not first  # a new chain goes where the load is least


def test_a_chain_moves_when_its_worker_goes_down_and_stays_on_the_new_one() -> None:
    pool = pool_of(2)
    first = pool.pick("chain")
    first.mark_down("test")
    second = pool.pick("chain")
    assert second is not first
    first.mark_up()
    assert pool.pick("chain") is second


def test_down_workers_get_no_work() -> None:
    pool = pool_of(3)
    pool.workers[0].mark_down("test")
    pool.workers[2].mark_down("test")
    assert {pool.pick(None) for _ in range(20)} == {pool.workers[1]}


def test_no_healthy_worker_is_unavailable_with_a_retry_hint() -> None:
    pool = pool_of(2)
    for worker in pool.workers:
        worker.mark_down("test")
    with pytest.raises(EngineUnavailableError) as raised:
        pool.pick(None)
    assert raised.value.retry_after is not None and raised.value.retry_after >= 1


def test_a_failed_worker_is_avoided_unless_it_is_the_only_one_left() -> None:
    pool = pool_of(2)
    failed = [pool.workers[0]]
    assert {pool.pick(None, avoid=failed) for _ in range(20)} == {pool.workers[1]}
    assert pool.pick(None, avoid=pool.workers) in pool.workers  # tried all: try again anyway


def test_excluded_workers_are_never_chosen() -> None:
    pool = pool_of(2)
    assert {pool.pick("chain", exclude=[pool.workers[0]]) for _ in range(20)} == {pool.workers[1]}
    with pytest.raises(EngineUnavailableError):
        pool.pick(None, exclude=pool.workers)


def test_the_oldest_chains_are_forgotten_past_the_slots() -> None:
    pool = pool_of(2, affinity_slots=2)
    first = pool.pick("old")
    pool.pick("newer")
    pool.pick("newest")
    first.in_flight = 5  # "old" is forgotten: it goes to the least-loaded worker like a new chain
    assert all(pool.pick("old") is not first for _ in range(5))


def test_marking_down_counts_a_failure_once_and_releases_waiting_requests() -> None:
    worker = WorkerState("http://127.0.0.1:9000")
    assert worker.down.is_set() and not worker.healthy  # down until its first probe passes
    worker.mark_up()
    assert not worker.down.is_set()
    worker.mark_down("refused")
    worker.mark_down("refused again")
    assert worker.down.is_set() and worker.failures == 1


def test_the_snapshot_carries_what_the_metrics_export() -> None:
    pool = pool_of(2)
    pool.workers[1].mark_down("test")
    with pool.workers[0].busy():
        busy = pool.snapshot()
    idle = pool.snapshot()
    assert [(s.up, s.in_flight, s.requests, s.failures) for s in busy] == [
        (True, 1, 1, 0),
        (False, 0, 0, 1),
    ]
    assert [(s.in_flight, s.requests) for s in idle] == [(0, 1), (0, 0)]
    assert idle[0].prefix_cache_hit_ratio is None
