"""The Responses API end to end, through the official openai SDK, on the embedded default model
(SmolLM2-135M-Instruct): text, streamed events, instructions and conversations, a required function
tool, previous_response_id, stored responses (retrieve, delete, cancel, store=false), the power
route's report, and refused fields. Answers are kept short (max_output_tokens 8 to 64).

The function-tool test needs the chat layer's tool calling (tool_choice "required" constrains the
answer to the tools' schemas)."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.responses import Response

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def base_model(default_client: openai.OpenAI) -> str:
    """The base model's id (beside it: <base>-power, maybe <base>-distilled)."""
    ids = [model.id for model in default_client.models.list().data]
    return next(i for i in ids if f"{i}-power" in ids)


def test_a_response_answers_in_text(default_client: openai.OpenAI, base_model: str) -> None:
    response = default_client.responses.create(
        model=base_model,
        input="What is the capital of France? Answer in one word.",
        max_output_tokens=16,
        temperature=0,
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete") and response.model == base_model
    assert "Paris" in response.output_text
    assert response.usage is not None and 0 < response.usage.output_tokens <= 16
    assert response.usage.input_tokens > 10  # the chat template is there
    assert response.model_extra is not None and "self_reward" in response.model_extra


def test_a_streamed_response_is_its_events(default_client: openai.OpenAI, base_model: str) -> None:
    stream = default_client.responses.create(
        model=base_model,
        input="Name three colours.",
        max_output_tokens=24,
        stream=True,
        extra_body={"seed": 0},
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text and text == final.output_text
    assert final.usage is not None and final.usage.output_tokens <= 24


def test_instructions_and_a_conversation(default_client: openai.OpenAI, base_model: str) -> None:
    conversation = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Now say goodbye."},
    ]
    response = default_client.responses.create(
        model=base_model,
        instructions="You answer in one short sentence.",
        input=conversation,  # type: ignore[arg-type]
        max_output_tokens=16,
    )
    assert response.instructions == "You answer in one short sentence."
    assert response.output_text
    items = default_client.responses.input_items.list(response.id, order="asc").data
    assert [item.role for item in items] == ["user", "assistant", "user"]  # type: ignore[union-attr]


def test_a_required_function_tool_is_called_with_valid_arguments(
    default_client: openai.OpenAI, base_model: str
) -> None:
    response = default_client.responses.create(
        model=base_model,
        input="What is the weather like in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        # One call: with parallel calls the grammar's list may grow until max_output_tokens cuts
        # it (a small model repeats itself), and a list cut short is no call.
        parallel_tool_calls=False,
        max_output_tokens=64,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and response.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"} and arguments["city"] in ("Paris", "London", "Tokyo")

    answered = default_client.responses.create(
        model=base_model,
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=24,
    )
    assert answered.status in ("completed", "incomplete")


def test_previous_response_id_continues_a_conversation(
    default_client: openai.OpenAI, base_model: str
) -> None:
    first = default_client.responses.create(
        model=base_model, input="My name is Ada.", max_output_tokens=16
    )
    second = default_client.responses.create(
        model=base_model, previous_response_id=first.id, input="What is my name?", max_output_tokens=16
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    items = default_client.responses.input_items.list(second.id, order="asc").data
    texts = [item.content[0].text for item in items]  # type: ignore[union-attr]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?"]


def test_stored_responses_are_retrieved_and_deleted(
    default_client: openai.OpenAI, base_model: str
) -> None:
    response = default_client.responses.create(model=base_model, input="Say yes.", max_output_tokens=8)
    retrieved = default_client.responses.retrieve(response.id)
    assert (retrieved.id, retrieved.output_text) == (response.id, response.output_text)
    with pytest.raises(openai.BadRequestError, match="background"):
        default_client.responses.cancel(response.id)
    default_client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        default_client.responses.retrieve(response.id)


def test_a_response_not_stored_is_not_found(default_client: openai.OpenAI, base_model: str) -> None:
    response = default_client.responses.create(
        model=base_model, input="Say no.", max_output_tokens=8, store=False
    )
    assert response.output_text is not None
    with pytest.raises(openai.NotFoundError):
        default_client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        default_client.responses.create(
            model=base_model, input="Again?", previous_response_id=response.id, max_output_tokens=8
        )


def test_the_power_route_reports_its_work(default_client: openai.OpenAI, base_model: str) -> None:
    response = default_client.responses.create(
        model=f"{base_model}-power",
        input="Name a colour.",
        max_output_tokens=8,
        extra_body={"power_method": "smc", "power_particles": 2},
    )
    assert response.model == f"{base_model}-power"
    assert response.model_extra is not None
    power = response.model_extra["power"]
    assert power["tokens_generated"] >= response.usage.output_tokens  # type: ignore[union-attr]
    assert "self_reward" in power


def test_the_power_route_answers_a_text_format(default_client: openai.OpenAI, base_model: str) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    response = default_client.responses.create(
        model=f"{base_model}-power",
        input="Name a colour.",
        max_output_tokens=16,
        text={"format": {"type": "json_schema", "name": "colour", "schema": schema}},
        extra_body={"power_particles": 2},
    )
    assert json.loads(response.output_text)["colour"] in ("red", "green", "blue")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
    ],
)
def test_unsupported_fields_are_refused_by_name(
    default_client: openai.OpenAI, base_model: str, fields: dict[str, object], param: str
) -> None:
    body = {"input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        default_client.post("/responses", body={"model": base_model, **body}, cast_to=Response)
    assert caught.value.param == param
