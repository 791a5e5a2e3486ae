"""Fine-tuning jobs and their events in both offline stores (SQLite under the state directory, Redis
against a real redis-server, no engine), and the hyperparameters' defaults."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from loadtests.harness import RedisProcess
from service.jobs import (
    ACTIVE_TUNING_STATUSES,
    Hyperparameters,
    OfflineStore,
    RedisOfflineStore,
    SqliteOfflineStore,
    fine_tuned_model_id,
)

KINDS = ["sqlite", "redis"]


@pytest.fixture(scope="module")
def jobs_redis() -> Iterator[RedisProcess]:
    """A Redis of its own: the tests flush it."""
    server = RedisProcess().start()
    yield server
    server.stop()


def open_store(kind: str, tmp_path: Path, url: str, *, fresh: bool = True) -> OfflineStore:
    if kind == "sqlite":
        return SqliteOfflineStore(tmp_path)
    if fresh:
        redis.Redis.from_url(url).flushdb()
    return RedisOfflineStore(url, tuning_dir=tmp_path / "fine_tuning")


async def add_job(store: OfflineStore, seed: int = 0, **owner: str | None):
    return await store.add_job(
        model="tiny",
        training_file="file-x",
        suffix=None,
        seed=seed,
        hyperparameters={},
        metadata=None,
        **owner,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_jobs_move_only_from_active_statuses_and_events_page_newest_first(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        assert store.tuning_dir == tmp_path / "fine_tuning" and store.tuning_dir.is_dir()
        job = await store.add_job(
            model="tiny",
            training_file="file-x",
            suffix=None,
            seed=1,
            hyperparameters=Hyperparameters().resolved().model_dump(),
            metadata={"team": "a"},
        )
        assert job.status == "validating_files" and not job.final
        assert await store.get_job(job.id) == job
        second = await store.add_job(
            model="tiny", training_file="f", suffix="s", seed=2, hyperparameters={}, metadata=None
        )
        page, more = await store.list_jobs(limit=1, after=None)
        assert [j.id for j in page] == [second.id] and more  # newest first
        page, more = await store.list_jobs(limit=5, after=second.id)
        assert [j.id for j in page] == [job.id] and not more
        active = await store.jobs_with_status(ACTIVE_TUNING_STATUSES)
        assert [j.id for j in active] == [job.id, second.id]  # oldest first

        cancelled = await store.update(job.id, only_from=("running",), status="cancelled")
        assert cancelled is not None and cancelled.status == "validating_files"  # not running
        done = await store.update(
            job.id, only_from=("validating_files",), status="succeeded", result_files=["file-r"]
        )
        assert done is not None and done.final and done.result_files == ("file-r",)
        again = await store.update(job.id, only_from=("validating_files",), status="failed")
        assert again is not None and again.status == "succeeded"  # a final job stays final
        assert [j.id for j in await store.jobs_with_status(ACTIVE_TUNING_STATUSES)] == [second.id]
        assert [j.id for j in await store.jobs_with_status(("succeeded",))] == [job.id]
        # Fields without a status move; None clears one; an error is kept as given.
        queued = await store.update(second.id, status="queued", adapter_dir="/a", trained_tokens=7)
        assert queued is not None and (queued.adapter_dir, queued.trained_tokens) == ("/a", 7)
        failed = await store.update(
            second.id, status="failed", adapter_dir=None, error={"code": "x", "message": "m"}
        )
        assert (
            failed is not None
            and failed.adapter_dir is None
            and failed.error
            == {
                "code": "x",
                "message": "m",
            }
        )
        assert await store.jobs_with_status(ACTIVE_TUNING_STATUSES) == []
        assert await store.update("ftjob-none", status="failed") is None

        for i in range(5):
            await store.add_event(job.id, f"event {i}", type="metrics", data={"i": i})
        await store.add_event(second.id, "other job")
        events, more = await store.list_events(job.id, limit=3, after=None)
        assert [e.message for e in events] == ["event 4", "event 3", "event 2"] and more
        older, more = await store.list_events(job.id, limit=3, after=events[-1].to_json()["id"])
        assert [e.data for e in older] == [{"i": 1}, {"i": 0}] and not more
        assert events[0].to_json()["object"] == "fine_tuning.job.event"
        assert all(e.job_id == job.id and e.type == "metrics" for e in events + older)
        others, _ = await store.list_events(second.id, limit=5, after=None)
        assert [(e.message, e.level, e.data) for e in others] == [("other job", "info", None)]
        await store.close()

        # Everything is kept: a new store on the same directory (or Redis) sees it.
        reopened = open_store(kind, tmp_path, jobs_redis.url, fresh=False)
        kept = await reopened.get_job(job.id)
        assert kept is not None and kept.status == "succeeded" and kept.metadata == {"team": "a"}
        assert kept.hyperparameters == Hyperparameters().resolved().model_dump()
        events, _ = await reopened.list_events(job.id, limit=1, after=None)
        assert [e.message for e in events] == ["event 4"]
        await reopened.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_jobs_list_by_project_and_keep_their_owner(
    kind: str, tmp_path: Path, jobs_redis: RedisProcess
) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path, jobs_redis.url)
        owners = [("a", "key-a"), ("b", "key-b"), ("a", "key-a2"), (None, None), ("a", "key-a")]
        jobs = [
            await add_job(store, i, project=project, key_name=key)
            for i, (project, key) in enumerate(owners)
        ]
        ids = [j.id for j in jobs]
        for job in jobs:
            assert await store.get_job(job.id) == job
        assert (jobs[1].project, jobs[1].key_name) == ("b", "key-b")
        assert not {"project", "key_name"} & set(jobs[1].to_json())

        page, more = await store.list_jobs(limit=2, after=None, project="a")
        assert [j.id for j in page] == [ids[4], ids[2]] and more
        page, more = await store.list_jobs(limit=2, after=ids[2], project="a")
        assert [j.id for j in page] == [ids[0]] and not more
        page, more = await store.list_jobs(limit=2, after=ids[4], project="b")  # a's: no cursor
        assert [j.id for j in page] == [ids[1]] and not more
        page, more = await store.list_jobs(limit=10, after=None)
        assert [j.id for j in page] == ids[::-1] and not more
        # A status move keeps the owner.
        moved = await store.update(ids[1], status="running")
        assert moved is not None and (moved.project, moved.key_name) == ("b", "key-b")
        await store.close()

    asyncio.run(scenario())


def test_a_job_id_that_names_a_sub_key_is_not_found(tmp_path: Path, jobs_redis: RedisProcess) -> None:
    async def scenario() -> None:
        store = open_store("redis", tmp_path, jobs_redis.url)
        job = await add_job(store)
        await store.add_event(job.id, "hello")
        assert await store.get_job(f"{job.id}:events") is None
        assert await store.update(f"{job.id}:events", status="failed") is None
        assert await store.list_events(f"{job.id}:events", limit=5, after=None) == ([], False)
        kept = await store.get_job(job.id)
        assert kept is not None and kept.status == "validating_files"
        await store.close()

    asyncio.run(scenario())


def test_hyperparameters_resolve_auto_and_refuse_what_they_do_not_know() -> None:
    resolved = Hyperparameters(n_epochs="auto", learning_rate_multiplier=2).resolved()
    assert (resolved.n_epochs, resolved.batch_size) == (3, 8)
    assert resolved.train_config()["learning_rate"] == pytest.approx(6e-4)
    assert resolved.power.method == "smc" and resolved.power.particles == 4  # the teacher default
    assert resolved.power.mcmc_steps == 4  # for power_method mh
    assert resolved.answers_per_prompt == 4 and not resolved.lora_mlp
    modules = Hyperparameters(lora_mlp=True).resolved().train_config()["target_modules"]
    assert {"q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"} <= set(modules)
    assert "gate_proj" not in resolved.train_config()["target_modules"]
    for bad in (
        {"n_epochs": 0},
        {"eval_share": 1.0},
        {"power_method": "beam"},
        {"lr": 1},
        {"answers_per_prompt": 0},
        {"answers_per_prompt": 17},
    ):
        with pytest.raises(ValidationError):
            Hyperparameters.model_validate(bad)
    assert fine_tuned_model_id("tiny", None, "ftjob-abc") == "ft:tiny:powerserve:abc"
