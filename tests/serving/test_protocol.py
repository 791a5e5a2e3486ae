"""Request models of offline work: metadata bounded the same way on batches and jobs, expires_after
within OpenAI's bounds."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.engines.base import Constraint
from service.errors import InvalidRequestError
from service.serving.protocol import (
    BatchCreateRequest,
    ChatCompletionRequest,
    CompletionRequest,
    ExpiresAfter,
    FineTuningJobRequest,
)

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


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("request_type", [ChatCompletionRequest, CompletionRequest])
def test_unsupported_fields_are_refused_unless_neutral(request_type: type) -> None:
    base = CHAT if request_type is ChatCompletionRequest else {"model": "m", "prompt": "hi"}
    for neutral in ({"top_k": -1}, {"min_p": 0}, {"repetition_penalty": 1.0}, {"modalities": ["text"]}):
        request_type.model_validate(base | neutral)
    with pytest.raises(InvalidRequestError) as refused:
        request_type.model_validate(base | {"min_tokens": 3})
    assert refused.value.param == "min_tokens" and refused.value.code == "unsupported_parameter"


def test_unknown_fields_are_logged_once_each_and_the_names_kept_are_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.serving import protocol

    monkeypatch.setattr(protocol, "_LOGGED_UNKNOWN", set())
    with caplog.at_level("INFO", logger="service.serving.protocol"):
        ChatCompletionRequest.model_validate(CHAT | {"novel_a": 1})
        ChatCompletionRequest.model_validate(CHAT | {"novel_a": 2})
    assert sum("novel_a" in r.getMessage() for r in caplog.records) == 1
    ChatCompletionRequest.model_validate(CHAT | {f"f{i}": 0 for i in range(1000)})
    assert len(protocol._LOGGED_UNKNOWN) == protocol._LOGGED_UNKNOWN_MAX


def test_tool_messages_reach_the_template_in_hugging_faces_shape() -> None:
    request = ChatCompletionRequest.model_validate(
        CHAT
        | {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ]
        }
    )
    assistant, tool = (m.to_template() for m in request.messages[1:])
    assert assistant["tool_calls"][0]["function"] == {"name": "w", "arguments": {"a": 1}}
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


def test_response_format_becomes_a_constraint() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    constraint, param = ChatCompletionRequest.model_validate(
        CHAT | {"response_format": fmt}
    ).format_constraint() or (None, None)
    assert constraint is not None and constraint.kind == "json" and param == "response_format"
    assert json.loads(constraint.spec) == schema
    plain = ChatCompletionRequest.model_validate(CHAT | {"response_format": {"type": "text"}})
    assert plain.format_constraint() is None


def test_structured_outputs_become_a_regex_or_choice_constraint() -> None:
    regex = ChatCompletionRequest.model_validate(CHAT | {"structured_outputs": {"regex": "[0-9]+"}})
    assert regex.format_constraint() == (Constraint("regex", "[0-9]+"), "structured_outputs")
    choice = ChatCompletionRequest.model_validate(
        CHAT | {"structured_outputs": {"choice": ["yes", "no"]}}
    )
    constraint, param = choice.format_constraint() or (None, None)
    assert constraint is not None and constraint.kind == "choice" and param == "structured_outputs"
    assert json.loads(constraint.spec) == ["yes", "no"]
    beside_text = {"response_format": {"type": "text"}, "structured_outputs": {"regex": "a"}}
    assert ChatCompletionRequest.model_validate(CHAT | beside_text).format_constraint() is not None
