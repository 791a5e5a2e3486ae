"""Tool calling's pure parts: the constraint a required or named call makes, and how answers, whole
and streamed, become tool calls (with vLLM's own hermes parser, as served)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from transformers import AutoTokenizer

from service.engines.tool_parsers import ToolCallParser, tool_call_parsers
from service.serving.protocol import ChatCompletionRequest
from service.serving.tools import ToolCalling

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time"}},
]


@pytest.fixture(scope="module")
def parser(tiny_model_dir: Path) -> ToolCallParser:
    return ToolCallParser("hermes", AutoTokenizer.from_pretrained(str(tiny_model_dir)))


def calling(parser: ToolCallParser, **fields: Any) -> ToolCalling:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS} | fields
    return ToolCalling(ChatCompletionRequest.model_validate(body), parser)


def test_a_named_call_is_constrained_to_its_arguments(parser: ToolCallParser) -> None:
    tools = calling(parser, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    constraint, param = tools.constraint() or (None, None)
    assert constraint is not None and constraint.kind == "json" and param == "tool_choice"
    assert json.loads(constraint.spec) == WEATHER
    message, reason = tools.message('{"city":"Rome"}', "stop")
    assert message["content"] is None and reason == "tool_calls"
    (call,) = message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"


def test_a_function_without_parameters_takes_any_object(parser: ToolCallParser) -> None:
    tools = calling(parser, tool_choice={"type": "function", "function": {"name": "get_time"}})
    constraint, _ = tools.constraint() or (None, None)
    assert constraint is not None and json.loads(constraint.spec) == {"type": "object"}


@pytest.mark.parametrize("parallel", [True, False])
def test_required_calls_are_a_list_of_the_tools(parser: ToolCallParser, parallel: bool) -> None:
    tools = calling(parser, tool_choice="required", parallel_tool_calls=parallel)
    constraint, _ = tools.constraint() or (None, None)
    assert constraint is not None
    schema = json.loads(constraint.spec)
    good = [{"name": "get_weather", "parameters": {"city": "Paris"}}]
    jsonschema.validate(good, schema)
    for bad in ([], [{"name": "get_weather", "parameters": {"city": "Oslo"}}], [{"name": "nope"}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    two = [*good, {"name": "get_time", "parameters": {}}]
    if parallel:
        jsonschema.validate(two, schema)
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(two, schema)
    message, reason = tools.message(json.dumps(two), "stop")
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert reason == "tool_calls"


def test_a_required_call_cut_short_is_returned_as_text(parser: ToolCallParser) -> None:
    tools = calling(parser, tool_choice="required")
    message, reason = tools.message('[{"name":"get_wea', "length")
    assert message == {"role": "assistant", "content": '[{"name":"get_wea'} and reason == "length"


def test_auto_parses_the_models_own_syntax(parser: ToolCallParser) -> None:
    tools = calling(parser)
    assert tools.constraint() is None and tools.shown == TOOLS
    answer = (
        'Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    message, reason = tools.message(answer, "stop")
    assert message["content"] == "Let me look. " and reason == "tool_calls"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Rome"}
    message, reason = tools.message("Just words.", "stop")
    assert message == {"role": "assistant", "content": "Just words."} and reason == "stop"


def test_auto_without_parallel_calls_keeps_the_first(parser: ToolCallParser) -> None:
    call = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    message, _ = calling(parser, parallel_tool_calls=False).message(call + call, "stop")
    assert len(message["tool_calls"]) == 1


def test_none_hides_the_tools_and_parses_nothing(parser: ToolCallParser) -> None:
    tools = calling(parser, tool_choice="none")
    assert tools.shown is None and tools.constraint() is None
    text = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert tools.message(text, "stop") == ({"role": "assistant", "content": text}, "stop")


def test_a_streamed_named_call_sends_its_arguments_as_they_come(parser: ToolCallParser) -> None:
    tools = calling(parser, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    stream = tools.stream()
    first = stream.push('{"ci')
    second = stream.push('ty":"Paris"}')
    assert first[0] == "" and first[1][0]["function"] == {"name": "get_weather", "arguments": '{"ci'}
    assert first[1][0]["id"].startswith("call_") and "id" not in second[1][0]
    assert second[1][0]["function"] == {"arguments": 'ty":"Paris"}'}
    assert stream.finish() == ("", []) and stream.finish_reason("stop") == "tool_calls"


def test_streamed_auto_sends_text_up_to_a_call_and_the_call_at_the_end(
    parser: ToolCallParser,
) -> None:
    stream = calling(parser).stream()
    pieces = ["Sure, ", "<tool", '_call>{"name": "get_time", ', '"arguments": {}}</tool_call>']
    sent = [stream.push(piece) for piece in pieces]
    # "<tool" could be the start of a call: held back, then never sent as text.
    assert [content for content, _ in sent] == ["Sure, ", "", "", ""]
    content, calls = stream.finish()
    assert content == "" and calls[0]["index"] == 0
    assert calls[0]["function"] == {"name": "get_time", "arguments": "{}"}
    assert stream.finish_reason("stop") == "tool_calls"


def test_streamed_auto_text_that_only_looked_like_a_call_is_sent_at_the_end(
    parser: ToolCallParser,
) -> None:
    stream = calling(parser).stream()
    assert stream.push("a <to") == ("a ", [])
    assert stream.finish() == ("<to", []) and stream.finish_reason("stop") == "stop"


def test_an_unknown_parser_is_refused_with_the_known_ones(tiny_model_dir: Path) -> None:
    assert "hermes" in tool_call_parsers()
    with pytest.raises(ValueError, match="hermes"):
        ToolCallParser("no-such-parser", AutoTokenizer.from_pretrained(str(tiny_model_dir)))
