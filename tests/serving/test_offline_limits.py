"""The limits on creating offline work, per project, in the serving objects themselves (no engine, no
HTTP): bytes stored and uploads per minute (FilesServing), batches and fine-tuning jobs not yet
final (BatchesServing, FineTuningServing), on a real SQLite store. Each test reaches its bound and
checks what the endpoint would answer: the status, OpenAI's error code and param, the retry-after.
Without keys every caller is one project; another project is never counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.config import Settings
from service.errors import (
    InvalidRequestError,
    PowerserveError,
    RateLimitedError,
    TooManyActiveError,
)
from service.jobs import SqliteOfflineStore, now
from service.limits import ApiKey
from service.serving import BatchesServing, Caller, FilesServing, FineTuningServing
from service.serving.errors import error_of
from service.serving.protocol import BatchCreateRequest, FineTuningJobRequest

ALICE = Caller.with_key(ApiKey("alice", project_name="red"))
ALAN = Caller.with_key(ApiKey("alan", project_name="red"))  # alice's project
BOB = Caller.with_key(ApiKey("bob"))  # a project of his own
LOCAL = Caller.from_address("127.0.0.1")  # without keys: all share the project None
OTHER_LOCAL = Caller.from_address("10.0.0.2")

BATCH_LINE = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
TUNING_LINE = {"messages": [{"role": "user", "content": "2+2?"}]}


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def jsonl(line: dict[str, Any], size: int) -> bytes:
    """One JSONL line of exactly ``size`` bytes (padded in a field)."""
    bare = json.dumps({**line, "pad": ""}) + "\n"
    content = (json.dumps({**line, "pad": "p" * (size - len(bare))}) + "\n").encode()
    assert len(content) == size
    return content


def refusal(exc: PowerserveError) -> tuple[int, str | None, str | None]:
    """(status, code, param) as the endpoint answers the error."""
    status, body = error_of(exc)
    return status, body["error"]["code"], body["error"]["param"]


def files_serving(tmp_path: Path, **limits: int) -> FilesServing:
    defaults = {"uploads_per_minute": 0, "files_max_bytes_per_project": 0}
    settings = Settings.model_validate({"state_dir": tmp_path / "state", **defaults, **limits})
    return FilesServing(SqliteOfflineStore(settings.resolved_state_dir), settings)


async def upload(files: FilesServing, caller: Caller, size: int = 200, purpose: str = "batch") -> str:
    line = BATCH_LINE if purpose == "batch" else TUNING_LINE
    created = await files.create(jsonl(line, size), filename="in.jsonl", purpose=purpose, caller=caller)
    return str(created["id"])


def test_the_defaults() -> None:
    settings = Settings()
    assert settings.files_max_bytes_per_project == 10 * 1024**3
    assert settings.uploads_per_minute == 60
    assert settings.batches_max_active_per_project == 10
    assert settings.fine_tuning_max_active_per_project == 2


# --- storage per project -----------------------------------------------------------------------


def test_an_upload_over_the_projects_storage_is_a_400_naming_the_usage(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, files_max_bytes_per_project=500)
        first = await upload(files, ALICE)
        await upload(files, ALAN)  # 400 of 500 bytes: red's two keys share its storage
        with pytest.raises(InvalidRequestError) as refused:
            await upload(files, ALICE)
        assert refusal(refused.value) == (400, "storage_limit_exceeded", "file")
        assert "project 'red'" in refused.value.message
        assert "400 bytes" in refused.value.message and "500 bytes" in refused.value.message
        await upload(files, ALICE, size=100)  # up to the limit exactly
        await upload(files, BOB, size=500)  # another project's storage is its own
        # A deleted file frees its bytes; a file already expired counts no more.
        await files.delete(first, ALICE)
        old = b"x" * 500
        await files.store.add_file(
            old, filename="old", purpose="batch", project="red", expires_at=now() - 1
        )
        await upload(files, ALAN)
        await files.store.close()

    run(scenario)


def test_batch_outputs_count_toward_the_projects_storage(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, files_max_bytes_per_project=450)
        await upload(files, ALICE)
        # What the batch worker writes (an output file of the project's batch) is never refused...
        await files.store.add_file(b"o" * 200, filename="out", purpose="batch_output", project="red")
        # ...but it takes the project's storage: 400 of 450 bytes.
        with pytest.raises(InvalidRequestError) as refused:
            await upload(files, ALICE)
        assert refusal(refused.value) == (400, "storage_limit_exceeded", "file")
        await files.store.close()

    run(scenario)


def test_concurrent_uploads_cannot_pass_the_storage_limit_together(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, files_max_bytes_per_project=300)
        outcomes = await asyncio.gather(
            *(upload(files, ALICE) for _ in range(3)), return_exceptions=True
        )
        stored = [o for o in outcomes if isinstance(o, str)]
        refused = [o for o in outcomes if isinstance(o, InvalidRequestError)]
        assert (len(stored), len(refused)) == (1, 2), outcomes
        assert await files.store.project_bytes("red") == 200
        assert files._storing == {}  # nothing left reserved
        await files.store.close()

    run(scenario)


def test_without_keys_every_caller_shares_one_storage(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, files_max_bytes_per_project=300)
        await upload(files, LOCAL)
        with pytest.raises(InvalidRequestError) as refused:
            await upload(files, OTHER_LOCAL)
        assert refusal(refused.value) == (400, "storage_limit_exceeded", "file")
        assert "no API keys" in refused.value.message
        await upload(files, ALICE)  # a key's project is counted apart
        await files.store.close()

    run(scenario)


def test_a_refused_upload_stores_nothing_and_a_failed_one_reserves_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, files_max_bytes_per_project=300)
        with pytest.raises(InvalidRequestError) as invalid:  # not JSONL: refused after the checks
            await files.create(b"not json\n", filename="x", purpose="batch", caller=ALICE)
        assert invalid.value.code != "storage_limit_exceeded"
        assert files._storing == {}
        await upload(files, ALICE)
        with pytest.raises(InvalidRequestError):
            await upload(files, ALICE)
        page = await files.list(ALICE, purpose=None, limit=10, after=None, ascending=True)
        assert len(page["data"]) == 1
        await files.store.close()

    run(scenario)


# --- uploads per minute --------------------------------------------------------------------------


def test_uploads_over_the_projects_rate_are_a_429_with_retry_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, uploads_per_minute=3)
        await upload(files, ALICE)
        await upload(files, ALAN)
        await upload(files, ALICE)
        with pytest.raises(RateLimitedError) as refused:
            await upload(files, ALAN)
        assert refusal(refused.value) == (429, "rate_limit_exceeded", None)
        assert refused.value.kind == "requests"
        assert 1 <= refused.value.retry_after <= 60
        assert "project 'red'" in refused.value.message and "3 per minute" in refused.value.message
        await upload(files, BOB)  # another project's window
        await upload(files, LOCAL)
        await files.store.close()

    run(scenario)


def test_without_keys_uploads_share_one_window(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, uploads_per_minute=1)
        await upload(files, LOCAL)
        with pytest.raises(RateLimitedError) as refused:
            await upload(files, OTHER_LOCAL)
        assert refusal(refused.value)[:2] == (429, "rate_limit_exceeded")
        await files.store.close()

    run(scenario)


def test_zero_is_unlimited(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(
            tmp_path,
            uploads_per_minute=0,
            files_max_bytes_per_project=0,
            batches_max_active_per_project=0,
            fine_tuning_max_active_per_project=0,
        )
        for _ in range(5):
            await upload(files, ALICE, size=1000)
        batches = BatchesServing(files.store, files, wake=lambda: None)
        input_file = await upload(files, ALICE)
        for _ in range(12):
            await batches.create(batch_request(input_file), ALICE)
        tuning = fine_tuning_serving(files)
        request = FineTuningJobRequest(
            model="base", training_file=await upload(files, ALICE, purpose="fine-tune")
        )
        for _ in range(3):
            await tuning.create(request, ALICE)
        await files.store.close()

    run(scenario)


# --- batches and fine-tuning jobs at once ----------------------------------------------------


def batch_request(input_file_id: str) -> BatchCreateRequest:
    return BatchCreateRequest(
        input_file_id=input_file_id, endpoint="/v1/completions", completion_window="24h"
    )


def test_a_batch_over_the_projects_active_batches_is_a_429_too_many_active(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, batches_max_active_per_project=2)
        batches = BatchesServing(files.store, files, wake=lambda: None)
        red_file, bob_file = await upload(files, ALICE), await upload(files, BOB)
        first = await batches.create(batch_request(red_file), ALICE)
        await batches.create(batch_request(red_file), ALAN)
        with pytest.raises(TooManyActiveError) as refused:
            await batches.create(batch_request(red_file), ALICE)
        assert refusal(refused.value) == (429, "too_many_active", None)
        assert refused.value.retry_after == 60
        assert "limit is 2" in refused.value.message and "project 'red'" in refused.value.message
        _, body = error_of(refused.value)
        assert body["error"]["type"] == "requests"
        await batches.create(batch_request(bob_file), BOB)  # bob's project has none
        # Cancelling is not final yet; cancelled is, and frees a place.
        await batches.cancel(first["id"], ALICE)
        with pytest.raises(TooManyActiveError):
            await batches.create(batch_request(red_file), ALICE)
        await files.store.set_status(first["id"], "cancelled")
        await batches.create(batch_request(red_file), ALICE)
        await files.store.close()

    run(scenario)


def test_concurrent_batch_creates_cannot_pass_the_limit_together(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, batches_max_active_per_project=2)
        batches = BatchesServing(files.store, files, wake=lambda: None)
        red_file = await upload(files, ALICE)
        outcomes = await asyncio.gather(
            *(batches.create(batch_request(red_file), ALICE) for _ in range(5)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, dict) for o in outcomes) == 2
        assert sum(isinstance(o, TooManyActiveError) for o in outcomes) == 3
        await files.store.close()

    run(scenario)


def test_without_keys_batches_count_as_one_project(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, batches_max_active_per_project=1)
        batches = BatchesServing(files.store, files, wake=lambda: None)
        shared = await upload(files, LOCAL)
        await batches.create(batch_request(shared), LOCAL)
        with pytest.raises(TooManyActiveError) as refused:
            await batches.create(batch_request(shared), OTHER_LOCAL)
        assert refusal(refused.value)[:2] == (429, "too_many_active")
        await files.store.close()

    run(scenario)


def fine_tuning_serving(files: FilesServing) -> FineTuningServing:
    """A FineTuningServing as a started gateway has it, with what ``create`` reads of the engine
    (the base model's name, the context length) and a worker standing in (no job runs here)."""
    serving = FineTuningServing(files.store, files, files.settings, wake=lambda: None)
    engine = SimpleNamespace(info=SimpleNamespace(max_model_len=2048))
    serving.models = cast(Any, SimpleNamespace(base_model="base", engine=engine))
    serving.worker = cast(Any, SimpleNamespace(cancel=lambda job_id: None))
    return serving


def test_a_job_over_the_projects_active_jobs_is_a_429_too_many_active(tmp_path: Path) -> None:
    async def scenario() -> None:
        files = files_serving(tmp_path, fine_tuning_max_active_per_project=1)
        tuning = fine_tuning_serving(files)
        red_file = await upload(files, ALICE, purpose="fine-tune")
        bob_file = await upload(files, BOB, purpose="fine-tune")
        request = FineTuningJobRequest(model="base", training_file=red_file)
        job = await tuning.create(request, ALICE)
        with pytest.raises(TooManyActiveError) as refused:
            await tuning.create(request, ALAN)
        assert refusal(refused.value) == (429, "too_many_active", None)
        assert refused.value.retry_after == 60
        assert "fine-tuning jobs" in refused.value.message and "limit is 1" in refused.value.message
        await tuning.create(FineTuningJobRequest(model="base", training_file=bob_file), BOB)
        await tuning.cancel(job["id"], ALICE)  # final: a place again
        await tuning.create(request, ALICE)
        await files.store.close()

    run(scenario)
