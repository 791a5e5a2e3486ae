"""The Responses API without an engine: a request translated into chat, a chat answer and a chat
stream translated back (each checked against the openai SDK's own types, and the stream fed to the
SDK's own accumulator), the 400s, and the stored responses (scoped by project, bounded by count,
size and time) in this process and in a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, cast

import pytest
import redis
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from loadtests.harness import RedisProcess
from service.config import Settings
from service.errors import (
    EngineError,
    InvalidRequestError,
    PowerserveError,
    RateLimitedError,
    StateUnavailableError,
)
from service.limits import ApiKey
from service.serving import Caller, ChatServing, ResponsesServing
from service.serving.errors import error_of, validation_error_body
from service.serving.protocol import ChatCompletionRequest
from service.serving.responses import (
    chat_body,
    input_items,
    new_item_id,
    response_events,
    response_from_chat,
    response_head,
)
from service.serving.responses_protocol import MAX_INPUT_ITEMS, MAX_TOOLS, ResponseCreateRequest
from service.serving.stored_responses import (
    PREFIX,
    MemoryStoredResponses,
    RedisStoredResponses,
    StoredResponse,
    StoredResponses,
    build_stored_responses,
)

ALICE = Caller.with_key(ApiKey("alice", project_name="red"))
ALAN = Caller.with_key(ApiKey("alan", project_name="red"))  # alice's project
BOB = Caller.with_key(ApiKey("bob"))  # a project of his own
OPS = Caller.with_key(ApiKey("ops", admin=True))
LOCAL = Caller.from_address("127.0.0.1")  # without keys: one project, None

EVENTS = TypeAdapter(ResponseStreamEvent)
ITEMS = TypeAdapter(list[ResponseItem])
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
SELF_REWARD = {"sum_logprob": -3.0, "mean_logprob": -0.5}
POWER = {"alpha": 4.0, "tokens_generated": 40, "self_reward": SELF_REWARD}


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(scenario)


def request(**fields: Any) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({"model": "m", **fields})


def refusal(exc: PowerserveError) -> tuple[int, str | None, str | None]:
    """(status, code, param) as the endpoint answers the error."""
    status, body = error_of(exc)
    return status, body["error"]["code"], body["error"]["param"]


def invalid_param(fields: dict[str, Any]) -> str | None:
    """The parameter a 400 for this body names (a pydantic error or a refusal)."""
    try:
        request(**fields)
    except ValidationError as exc:
        return cast(str | None, validation_error_body(exc.errors())["error"]["param"])
    except InvalidRequestError as exc:
        return exc.param
    raise AssertionError("accepted")


# --- the request, as chat -----------------------------------------------------------------------


def weather_call(call_id: str, city: str) -> dict[str, Any]:
    """A function_call item asking for ``city``'s weather."""
    arguments = json.dumps({"city": city})
    return {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": arguments}


def chat_call(call_id: str, city: str) -> dict[str, Any]:
    """The same call, as chat's tool call."""
    function = {"name": "get_weather", "arguments": json.dumps({"city": city})}
    return {"id": call_id, "type": "function", "function": function}


def test_a_conversation_becomes_chat_messages_with_tool_calls() -> None:
    body = request(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use metric units."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather"},
                    {"type": "input_text", "text": " in Paris?"},
                ],
            },
            {"role": "assistant", "content": "Let me look."},
            weather_call("call_1", "Paris"),
            weather_call("call_2", "Oslo"),
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "9 C"}],
            },
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        max_output_tokens=32,
        temperature=0.5,
        seed=7,
        power_method="smc",
        power_particles=2,
    )
    chat = chat_body(body, input_items(body.input))
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [chat_call("call_1", "Paris"), chat_call("call_2", "Oslo")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "9 C"},
    ]
    function = {k: v for k, v in WEATHER.items() if k != "type"}
    assert chat["tools"] == [{"type": "function", "function": function}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert (chat["max_completion_tokens"], chat["temperature"], chat["seed"]) == (32, 0.5, 7)
    assert (chat["power_method"], chat["power_particles"]) == ("smc", 2)
    assert chat["stream"] is False and "stream_options" not in chat
    assert not {"top_p", "user", "response_format", "power_alpha"} & chat.keys()  # unset: chat's
    ChatCompletionRequest.model_validate(chat)  # chat accepts what it is given


def test_a_function_call_without_an_assistant_message_is_one_of_its_own() -> None:
    body = request(
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "{}"},
        ]
    )
    messages = chat_body(body, input_items(body.input))["messages"]
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [call]}


def test_text_formats_become_response_formats_and_streams_ask_for_usage() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    body = request(input="hi", text={"format": fmt}, stream=True, tool_choice="none")
    chat = chat_body(body, input_items(body.input))
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["tool_choice"] == "none"
    assert body.text.to_json() == {"format": fmt}
    json_object = request(input="hi", text={"format": {"type": "json_object"}})
    assert chat_body(json_object, [])["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat_body(request(text={"format": {"type": "text"}}), [])
    ChatCompletionRequest.model_validate(chat)


def test_input_items_are_listed_as_openai_items_with_ids() -> None:
    body = request(
        input=[
            {"role": "user", "content": "Hi", "id": "msg_mine"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "done"},
        ]
    )
    items = input_items(body.input)
    parsed = ITEMS.validate_python(items)
    assert [item.type for item in parsed] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
    ]
    assert items[0]["id"] == "msg_mine" and items[0]["content"] == [{"type": "input_text", "text": "Hi"}]
    assert items[1]["content"][0] == {"type": "output_text", "text": "Hello", "annotations": []}
    assert len({item["id"] for item in items}) == 4
    assert [item["role"] for item in input_items("Hi")] == ["user"]
    assert input_items(None) == []


# --- the 400s -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("background", True),
        ("prompt", {"id": "pmpt_1"}),
        ("conversation", "conv_1"),
        ("top_logprobs", 5),
        ("max_tool_calls", 3),
        ("context_management", [{"type": "compaction"}]),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_by_name(name: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        request(input="hi", **{name: value})
    assert refusal(caught.value) == (400, "unsupported_parameter", name)


def test_fields_that_change_nothing_here_are_accepted() -> None:
    body = request(
        input="hi",
        background=False,
        top_logprobs=0,
        reasoning={"effort": "low"},
        include=["message.output_text.logprobs"],
        truncation="auto",
        service_tier="auto",
        stream_options={"include_obfuscation": False},
    )
    assert body.truncation == "auto"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": []}]}, "tools"),
        ({"tools": [WEATHER] * (MAX_TOOLS + 1)}, "tools"),
        ({"input": [{"role": "user", "content": "x"}] * (MAX_INPUT_ITEMS + 1)}, "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.message.role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input.0.message.content.0.type",
        ),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"truncation": "middle"}, "truncation"),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
def test_invalid_requests_are_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    assert invalid_param({"input": "hi", **fields}) == param


def test_input_items_are_bounded_and_the_bound_itself_is_accepted() -> None:
    body = request(input=[{"role": "user", "content": "x"}] * MAX_INPUT_ITEMS, tools=[WEATHER] * 3)
    assert len(input_items(body.input)) == MAX_INPUT_ITEMS


def test_chats_own_checks_name_the_responses_parameter() -> None:
    responses = ResponsesServing(cast(ChatServing, None), memory_store())  # refused before chat

    def param(**fields: Any) -> str | None:
        with pytest.raises(InvalidRequestError) as caught:
            run(responses.prepare(request(**fields), LOCAL))
        return caught.value.param

    assert param(input="hi", temperature=5) == "temperature"
    assert param(input="hi", power_particles=0) == "power_particles"
    assert param(input=[]) == "input"  # no message at all
    assert param(input="hi", tools=[{**WEATHER, "name": "bad name"}]) == "tools.0.function.name"


# --- the answer, as a Response -------------------------------------------------------------------


def head(**fields: Any) -> dict[str, Any]:
    return response_head(request(input="hi", **fields), new_item_id("resp"), "m-power")


def chat_answer(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m-power",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
        "self_reward": SELF_REWARD,
        "power": POWER,
    }


def test_a_chat_answer_becomes_a_response_the_sdk_accepts() -> None:
    start = head(instructions="Be brief.", max_output_tokens=16, metadata={"team": "red"})
    body = response_from_chat(start, chat_answer({"role": "assistant", "content": "Paris."}))
    response = Response.model_validate(body)
    assert response.id.startswith("resp_") and response.object == "response"
    assert (response.status, response.output_text, response.model) == ("completed", "Paris.", "m-power")
    assert response.output[0].type == "message" and response.output[0].id.startswith("msg_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        11,
        5,
        16,
    )
    assert (response.instructions, response.max_output_tokens, response.metadata) == (
        "Be brief.",
        16,
        {"team": "red"},
    )
    assert response.error is None and response.incomplete_details is None and body["store"] is True
    assert response.model_extra is not None
    assert (response.model_extra["self_reward"], response.model_extra["power"]) == (SELF_REWARD, POWER)
    json.dumps(body)  # as stored and sent


def test_an_answer_cut_at_max_output_tokens_is_incomplete() -> None:
    body = response_from_chat(head(), chat_answer({"role": "assistant", "content": "Par"}, "length"))
    response = Response.model_validate(body)
    assert response.status == "incomplete" and response.output[0].status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_tool_calls_become_function_call_items() -> None:
    calls = [chat_call("call_a", "Paris"), chat_call("call_b", "Oslo")]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    start = head(tools=[WEATHER], tool_choice="required")
    response = Response.model_validate(response_from_chat(start, chat_answer(message, "tool_calls")))
    assert response.status == "completed" and len(response.output) == 2
    first = response.output[0]
    assert first.type == "function_call" and first.id is not None and first.id.startswith("fc_")
    assert (first.call_id, first.name, json.loads(first.arguments)) == (
        "call_a",
        "get_weather",
        {"city": "Paris"},
    )
    assert response.tool_choice == "required" and response.tools[0].type == "function"


def test_an_empty_answer_is_an_empty_message() -> None:
    response = Response.model_validate(response_from_chat(head(), chat_answer({"content": ""})))
    assert response.output_text == "" and len(response.output) == 1


# --- the stream, as Responses events ---------------------------------------------------------------


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
    } | extra


USAGE_CHUNK = chunk(
    usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    self_reward=SELF_REWARD,
    power=POWER,
)


async def chunks_of(
    *chunks: dict[str, Any], error: PowerserveError | None = None
) -> AsyncIterator[dict[str, Any]]:
    for one in chunks:
        yield one
    if error is not None:
        raise error


def events_of(start: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in response_events(start, chunks)]

    return cast(list[dict[str, Any]], run(collect()))


def check_sequence(events: list[dict[str, Any]]) -> Any:
    """Every event valid for the SDK, numbered in order, and the SDK's accumulator's final response
    (None when the stream ended without response.completed)."""
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(EVENTS.validate_python(json.loads(json.dumps(event))))
    return state._completed_response


def test_a_streamed_answer_is_the_responses_event_sequence() -> None:
    start = head()
    chunks = chunks_of(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Par"}),
        chunk({"content": "is."}),
        chunk({}, "stop", self_reward=SELF_REWARD),
        USAGE_CHUNK,
    )
    events = events_of(start, chunks)
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Paris."
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Paris." and final["status"] == "completed"
    assert final["usage"]["output_tokens"] == 3 and (final["self_reward"], final["power"]) == (
        SELF_REWARD,
        POWER,
    )
    assert {e["item_id"] for e in events if "item_id" in e} == {final["output"][0]["id"]}
    accumulated = check_sequence(events)
    assert accumulated.output_text == "Paris." and accumulated.id == start["id"]


def test_streamed_tool_calls_are_function_call_items_with_their_argument_deltas() -> None:
    def call(index: int, arguments: str, **first: Any) -> dict[str, Any]:
        return {
            "index": index,
            **first,
            "function": {"arguments": arguments} | ({"name": "get_weather"} if first else {}),
        }

    chunks = chunks_of(
        chunk({"role": "assistant", "content": "Looking."}),
        chunk({"tool_calls": [call(0, '{"city":', id="call_a", type="function")]}),
        chunk({"tool_calls": [call(0, '"Paris"}')]}),
        chunk({"tool_calls": [call(1, '{"city":"Oslo"}', id="call_b", type="function")]}),
        chunk({}, "tool_calls"),
        USAGE_CHUNK,
    )  # fmt: skip
    events = events_of(head(tools=[WEATHER]), chunks)
    kinds = [event["type"] for event in events]
    assert kinds.count("response.function_call_arguments.delta") == 3
    assert (
        kinds.count("response.function_call_arguments.done") == 2 and kinds[-1] == "response.completed"
    )
    accumulated = check_sequence(events)
    message, paris, oslo = accumulated.output
    assert message.type == "message" and accumulated.output_text == "Looking."
    assert (paris.call_id, paris.name, json.loads(paris.arguments)) == (
        "call_a",
        "get_weather",
        {"city": "Paris"},
    )
    assert (oslo.call_id, json.loads(oslo.arguments)) == ("call_b", {"city": "Oslo"})
    assert [item["status"] for item in events[-1]["response"]["output"]] == ["completed"] * 3


def test_a_stream_cut_at_max_output_tokens_ends_incomplete() -> None:
    chunks = chunks_of(chunk({"role": "assistant", "content": "Par"}), chunk({}, "length"), USAGE_CHUNK)
    events = events_of(head(max_output_tokens=1), chunks)
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    assert check_sequence(events) is None  # the SDK completes only on response.completed
    Response.model_validate(final)


def test_an_empty_stream_still_has_its_message() -> None:
    events = events_of(head(), chunks_of(chunk({"role": "assistant"}), chunk({}, "stop"), USAGE_CHUNK))
    assert check_sequence(events).output_text == ""


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (EngineError("the engine failed"), "server_error"),
        (RateLimitedError("over the limit", kind="tokens", retry_after=1.0), "rate_limit_exceeded"),
    ],
)
def test_an_error_mid_stream_is_an_error_event_and_a_failed_response(
    error: PowerserveError, code: str
) -> None:
    chunks = chunks_of(chunk({"role": "assistant", "content": "Par"}), error=error)
    events = events_of(head(), chunks)
    assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["message"] == error.message and events[-2]["code"] == error.code
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.code, failed.error.message) == (code, error.message)
    assert failed.output_text == "Par"
    check_sequence(events)


# --- stored responses -------------------------------------------------------------------------------


def memory_store(**bounds: Any) -> MemoryStoredResponses:
    return MemoryStoredResponses(**({"ttl_s": 3600, "max_bytes": 1 << 20, "max_stored": 100} | bounds))


def stored(caller: Caller, store: StoredResponses, text: str = "Paris.") -> dict[str, Any]:
    """A response ``caller`` made and stored (its conversation: one question)."""
    response = response_from_chat(head(), chat_answer({"role": "assistant", "content": text}))
    items = input_items("Capital of France?")
    assert run(store.save(StoredResponse(response, items, caller.project)))
    return response


def test_a_stored_response_exists_only_for_its_project() -> None:
    store = memory_store()
    responses = ResponsesServing(cast(ChatServing, None), store)
    response = stored(ALICE, store)
    for caller in (ALICE, ALAN, OPS):
        assert run(responses.retrieve(response["id"], caller)) == response
    for call in (
        responses.retrieve(response["id"], BOB),
        responses.delete(response["id"], BOB),
        responses.cancel(response["id"], BOB),
        responses.input_items(response["id"], BOB, limit=20, ascending=True, after=None),
    ):
        with pytest.raises(PowerserveError) as caught:
            run(call)
        assert refusal(caught.value) == (404, "not_found", "response_id")
    assert run(responses.retrieve(response["id"], ALICE))  # bob's delete did nothing


def test_a_previous_response_of_another_project_is_not_found() -> None:
    store = memory_store()
    responses = ResponsesServing(cast(ChatServing, None), store)  # refused before chat
    response = stored(ALICE, store)
    with pytest.raises(PowerserveError) as caught:
        run(responses.prepare(request(input="And Norway?", previous_response_id=response["id"]), BOB))
    assert refusal(caught.value) == (404, "previous_response_not_found", "previous_response_id")


def test_without_keys_every_caller_shares_the_stored_responses() -> None:
    store = memory_store()
    responses = ResponsesServing(cast(ChatServing, None), store)
    response = stored(LOCAL, store)
    assert run(responses.retrieve(response["id"], Caller.from_address("10.0.0.2"))) == response


def test_delete_cancel_and_unknown_ids() -> None:
    store = memory_store()
    responses = ResponsesServing(cast(ChatServing, None), store)
    response = stored(ALICE, store)
    with pytest.raises(InvalidRequestError, match="background=true") as caught:
        run(responses.cancel(response["id"], ALICE))
    assert refusal(caught.value)[0] == 400
    deleted = run(responses.delete(response["id"], ALICE))
    assert deleted == {"id": response["id"], "object": "response", "deleted": True}
    for missing in (response["id"], "resp_unknown", "../keys", new_item_id("resp")):
        with pytest.raises(PowerserveError) as caught:
            run(responses.retrieve(missing, ALICE))
        assert refusal(caught.value)[0] == 404


def test_input_items_are_paged_newest_first_by_default() -> None:
    store = memory_store()
    responses = ResponsesServing(cast(ChatServing, None), store)
    body = request(input=[{"role": "user", "content": str(n)} for n in range(5)])
    items = input_items(body.input)
    response = response_from_chat(head(), chat_answer({"content": "ok"}))
    run(store.save(StoredResponse(response, items, ALICE.project)))
    ids = [item["id"] for item in items]

    def page(**query: Any) -> dict[str, Any]:
        args = {"limit": 20, "ascending": False, "after": None} | query
        return cast(dict[str, Any], run(responses.input_items(response["id"], ALICE, **args)))

    newest = page(limit=2)
    assert [item["id"] for item in newest["data"]] == ids[::-1][:2] and newest["has_more"] is True
    assert (newest["object"], newest["first_id"], newest["last_id"]) == ("list", ids[4], ids[3])
    rest = page(after=newest["last_id"])
    assert [item["id"] for item in rest["data"]] == ids[2::-1] and rest["has_more"] is False
    assert [item["id"] for item in page(ascending=True, limit=5)["data"]] == ids
    ITEMS.validate_python(page()["data"])
    with pytest.raises(InvalidRequestError) as caught:
        page(after="msg_nowhere")
    assert caught.value.param == "after"


def test_a_response_over_the_size_cap_is_answered_but_not_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = memory_store(max_bytes=2000)
    response = response_from_chat(head(), chat_answer({"content": "x" * 3000}))
    with caplog.at_level(logging.WARNING):
        assert run(store.save(StoredResponse(response, [], None))) is False
    assert run(store.load(response["id"])) is None
    assert "not stored" in caplog.text and "POWERSERVE_RESPONSES_MAX_BYTES" in caplog.text


def test_the_store_keeps_its_most_recent_responses_for_their_ttl() -> None:
    store = memory_store(max_stored=3)
    ids = [stored(LOCAL, store)["id"] for _ in range(4)]
    assert run(store.load(ids[0])) is None  # the least recently used went
    assert all(run(store.load(response_id)) for response_id in ids[1:])
    brief = memory_store(ttl_s=0.05)
    response_id = stored(LOCAL, brief)["id"]
    time.sleep(0.1)
    assert run(brief.load(response_id)) is None


@pytest.mark.usefixtures("clean_settings_environment")
def test_the_settings_choose_the_store() -> None:
    settings = Settings()
    assert (settings.responses_ttl_s, settings.responses_max_stored) == (86_400, 10_000)
    assert settings.responses_max_bytes == 1 << 20
    assert isinstance(build_stored_responses(settings), MemoryStoredResponses)
    cached = build_stored_responses(Settings(redis_url="redis://cache:6379/0"))
    assert isinstance(cached, RedisStoredResponses)


def test_the_redis_store_keeps_the_same_json_with_its_ttl(redis_server: RedisProcess) -> None:
    response = response_from_chat(head(), chat_answer({"content": "Paris."}))
    record = StoredResponse(response, input_items("Capital of France?"), "red")

    async def with_store(work: Any) -> Any:
        store = RedisStoredResponses(redis_server.url, ttl_s=60, max_bytes=1 << 20)
        try:
            return await work(store)
        finally:
            await store.close()

    assert run(with_store(lambda store: store.save(record)))
    assert run(with_store(lambda store: store.load(record.id))) == record
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert StoredResponse.from_json(client.get(PREFIX + record.id)) == record
        assert 0 < client.pttl(PREFIX + record.id) <= 60_000
        run(with_store(lambda store: store.delete(record.id)))
        assert client.exists(PREFIX + record.id) == 0
    finally:
        client.close()


def test_a_redis_that_cannot_be_reached_is_a_503_for_a_read() -> None:
    async def scenario() -> None:
        store = RedisStoredResponses("redis://127.0.0.1:1/0", ttl_s=60, max_bytes=1 << 20, timeout_s=0.5)
        responses = ResponsesServing(cast(ChatServing, None), store)
        try:
            with pytest.raises(StateUnavailableError) as caught:
                await responses.retrieve(new_item_id("resp"), ALICE)
            assert refusal(caught.value)[0] == 503
        finally:
            await store.close()

    run(scenario())
