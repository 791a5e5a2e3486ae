"""The fine-tuning job store (SQLite, no engine) and the hyperparameters' defaults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.jobs import FineTuningStore, Hyperparameters, JobStore, fine_tuned_model_id


def test_jobs_move_only_from_active_statuses_and_events_page_newest_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = JobStore(tmp_path)
        tuning = FineTuningStore(store)
        job = await tuning.add_job(
            model="tiny",
            training_file="file-x",
            suffix=None,
            seed=1,
            hyperparameters=Hyperparameters().resolved().model_dump(),
            metadata={"team": "a"},
        )
        assert job.status == "validating_files" and not job.final
        second = await tuning.add_job(
            model="tiny", training_file="f", suffix="s", seed=2, hyperparameters={}, metadata=None
        )
        page, more = await tuning.list_jobs(limit=1, after=None)
        assert [j.id for j in page] == [second.id] and more  # newest first
        page, more = await tuning.list_jobs(limit=5, after=second.id)
        assert [j.id for j in page] == [job.id] and not more

        cancelled = await tuning.update(job.id, only_from=("running",), status="cancelled")
        assert cancelled is not None and cancelled.status == "validating_files"  # not running
        done = await tuning.update(
            job.id, only_from=("validating_files",), status="succeeded", result_files=["file-r"]
        )
        assert done is not None and done.final and done.result_files == ("file-r",)
        again = await tuning.update(job.id, only_from=("validating_files",), status="failed")
        assert again is not None and again.status == "succeeded"  # a final job stays final

        for i in range(5):
            await tuning.add_event(job.id, f"event {i}", type="metrics", data={"i": i})
        await tuning.add_event(second.id, "other job")
        events, more = await tuning.list_events(job.id, limit=3, after=None)
        assert [e.message for e in events] == ["event 4", "event 3", "event 2"] and more
        older, more = await tuning.list_events(job.id, limit=3, after=events[-1].to_json()["id"])
        assert [e.data for e in older] == [{"i": 1}, {"i": 0}] and not more
        assert events[0].to_json()["object"] == "fine_tuning.job.event"
        await store.close()

        # Everything is on disk: a new store on the same directory sees it.
        reopened = FineTuningStore(JobStore(tmp_path))
        kept = await reopened.get_job(job.id)
        assert kept is not None and kept.status == "succeeded" and kept.metadata == {"team": "a"}
        await reopened.store.close()

    asyncio.run(scenario())


def test_hyperparameters_resolve_auto_and_refuse_what_they_do_not_know() -> None:
    resolved = Hyperparameters(n_epochs="auto", learning_rate_multiplier=2).resolved()
    assert (resolved.n_epochs, resolved.batch_size) == (3, 8)
    assert resolved.train_config()["learning_rate"] == pytest.approx(6e-4)
    assert resolved.power.mcmc_steps == 4 and resolved.power.method == "mh"
    for bad in ({"n_epochs": 0}, {"eval_share": 1.0}, {"power_method": "beam"}, {"lr": 1}):
        with pytest.raises(ValidationError):
            Hyperparameters.model_validate(bad)
    assert fine_tuned_model_id("tiny", None, "ftjob-abc") == "ft:tiny:powerserve:abc"
