"""Request models of offline work: metadata bounded the same way on batches and jobs, expires_after
within OpenAI's bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.errors import InvalidRequestError
from service.serving.protocol import BatchCreateRequest, ExpiresAfter, FineTuningJobRequest

BATCH = {"input_file_id": "file-1", "endpoint": "/v1/completions", "completion_window": "24h"}
JOB = {"model": "tiny", "training_file": "file-1"}


@pytest.mark.parametrize("fields", [BATCH, JOB])
@pytest.mark.parametrize(
    "metadata",
    [{str(i): "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}],
)
def test_metadata_is_bounded_on_batches_and_jobs(fields: dict, metadata: dict) -> None:
    model = BatchCreateRequest if fields is BATCH else FineTuningJobRequest
    with pytest.raises(ValidationError) as caught:
        model.model_validate(fields | {"metadata": metadata})
    assert caught.value.errors()[0]["loc"][0] == "metadata"
    assert model.model_validate(fields | {"metadata": {"k": "v"}}).metadata == {"k": "v"}


def test_expires_after_from_a_form() -> None:
    assert ExpiresAfter.from_form(None, None) is None
    assert ExpiresAfter.from_form("created_at", "3600") == ExpiresAfter(
        anchor="created_at", seconds=3600
    )
    for anchor, seconds, param in (
        ("created_at", "60", "expires_after.seconds"),
        ("last_active_at", "3600", "expires_after.anchor"),
        ("created_at", None, "expires_after.seconds"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            ExpiresAfter.from_form(anchor, seconds)
        assert caught.value.param == param
