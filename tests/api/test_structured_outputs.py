"""Structured outputs, tools, logit bias and request ids, through the official SDK on the embedded
default model (SmolLM2-135M-Instruct): fields that change the answer are honoured or refused,
never dropped."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
import openai
import pydantic
import pytest

from loadtests.harness import ServiceProcess

MODEL = "smollm2-135m-instruct"
POWER = f"{MODEL}-power"
DISTILLED = f"{MODEL}-distilled"

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather of a city", "parameters": WEATHER},
    }
]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class City(pydantic.BaseModel):
    name: Literal["Paris", "Rome", "Oslo"]
    country: pydantic.constr(max_length=12)  # type: ignore[valid-type]


def check_parse(client: openai.OpenAI, model: str = MODEL) -> None:
    completion = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Name a European city and its country."}],
        response_format=City,
        max_tokens=48,
        seed=1,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)


def check_forced_tool_call(client: openai.OpenAI, tool_choice: Any, model: str = MODEL) -> Any:
    completion = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_tokens=48,
        seed=3,
    )
    answer = completion.choices[0]
    assert answer.finish_reason == "tool_calls" and answer.message.content is None
    (call,) = answer.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    return completion


def check_logit_bias(client: openai.OpenAI, service: ServiceProcess) -> None:
    tokens = service.http.post(f"{service.url}/tokenize", json={"prompt": " banana"}).json()["tokens"]
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        logit_bias={str(tokens[-1]): 100},
        temperature=0,
        max_tokens=3,
    )
    assert (completion.choices[0].message.content or "").startswith(" banana banana")


def test_parse_returns_the_pydantic_object(default_client: openai.OpenAI) -> None:
    for model in (MODEL, DISTILLED):
        check_parse(default_client, model)


def test_json_object_is_json(default_client: openai.OpenAI) -> None:
    completion = default_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=96,
        seed=2,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("choice", ["named", "required"])
def test_a_forced_tool_call_validates_against_its_schema(
    default_client: openai.OpenAI, choice: str
) -> None:
    check_forced_tool_call(default_client, NAMED if choice == "named" else "required")


@pytest.mark.parametrize("choice", ["named", "required"])
def test_a_streamed_tool_call_joins_into_valid_arguments(
    default_client: openai.OpenAI, choice: str
) -> None:
    stream = default_client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice=NAMED if choice == "named" else "required",
        parallel_tool_calls=False,
        max_tokens=48,
        seed=4,
        stream=True,
    )
    ids, names, arguments, reasons, deltas = set(), [], "", [], 0
    for chunk in stream:
        for entry in chunk.choices:
            for call in entry.delta.tool_calls or []:
                deltas += 1
                assert call.index == 0
                ids |= {call.id} - {None}
                names += [call.function.name] if call.function and call.function.name else []
                arguments += call.function.arguments or "" if call.function else ""
            reasons += [entry.finish_reason] if entry.finish_reason else []
    assert len(ids) == 1 and names == ["get_weather"] and reasons == ["tool_calls"]
    jsonschema.validate(json.loads(arguments), WEATHER)
    if choice == "named":  # its arguments stream as they are generated
        assert deltas > 3


def test_a_tool_result_goes_back_into_the_conversation(default_client: openai.OpenAI) -> None:
    asked = default_client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=48,
        seed=5,  # type: ignore[arg-type]
    )
    call = (asked.choices[0].message.tool_calls or [])[0]
    conversation: list[Any] = [
        *ASK,
        asked.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    answered = default_client.chat.completions.create(
        model=MODEL, messages=conversation, tools=TOOLS, max_tokens=24, seed=5
    )
    without_result = default_client.chat.completions.create(
        model=MODEL, messages=conversation[:2], tools=TOOLS, max_tokens=1, seed=5
    )
    assert answered.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answered.usage and without_result.usage
    # The call and its result were rendered into the prompt (the tool turn adds its tokens).
    assert answered.usage.prompt_tokens > without_result.usage.prompt_tokens + 10


def test_logit_bias_is_honoured(default_client: openai.OpenAI, default_service: ServiceProcess) -> None:
    check_logit_bias(default_client, default_service)


def test_auto_tools_on_the_power_route_sample_the_power_law(default_client: openai.OpenAI) -> None:
    completion = default_client.chat.completions.create(
        model=POWER,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        max_tokens=8,
        seed=6,
        extra_body={"power_particles": 2},
    )
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert (completion.model_extra or {})["power"]["method"] == "smc"


def test_the_power_route_samples_under_a_schema_and_a_forced_tool(default_client: openai.OpenAI) -> None:
    """Power sampling restricted to what the grammar accepts (its law: tests/power/
    test_constrained.py): every particle is a valid answer, and the report counts all of them."""
    check_parse(default_client, POWER)
    completion = check_forced_tool_call(default_client, NAMED, model=POWER)
    power = (completion.model_extra or {})["power"]
    assert power["method"] == "smc" and power["particles"] == 4
    usage = completion.usage
    assert usage is not None and power["tokens_generated"] > usage.completion_tokens


@pytest.mark.parametrize(
    ("fields", "param", "why"),
    [
        ({"extra_body": {"power_method": "mh"}}, "response_format", "smc"),
        ({"temperature": 0}, "response_format", "smc"),
        ({"extra_body": {"mcmc_steps": 2}}, "response_format", "smc"),
        ({"logit_bias": {"5": 1}}, "logit_bias", "target"),
    ],
)
def test_the_power_route_refuses_what_it_cannot_sample_exactly(
    default_client: openai.OpenAI, fields: dict[str, Any], param: str, why: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        default_client.chat.completions.create(
            model=POWER,
            messages=ASK,
            max_tokens=4,
            response_format={"type": "json_object"},
            **fields,  # type: ignore[arg-type]
        )
    assert refused.value.body["param"] == param  # type: ignore[index]
    assert why in refused.value.body["message"]  # type: ignore[index]


TOO_MANY_TOOLS = [{"type": "function", "function": {"name": f"tool_{i}"}} for i in range(129)]


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"extra_body": {"top_k": 5}}, "top_k", "unsupported_parameter"),
        ({"extra_body": {"functions": [{"name": "f"}]}}, "functions", "unsupported_parameter"),
        ({"extra_body": {"guided_json": {}}}, "guided_json", "unsupported_parameter"),
        ({"extra_body": {"function_call": "auto"}}, "function_call", "unsupported_parameter"),
        ({"extra_body": {"audio": {"voice": "alloy"}}}, "audio", "unsupported_parameter"),
        ({"extra_body": {"modalities": ["text", "audio"]}}, "modalities", "unsupported_parameter"),
        ({"extra_body": {"prediction": {"type": "content"}}}, "prediction", "unsupported_parameter"),
        ({"extra_body": {"web_search_options": {}}}, "web_search_options", "unsupported_parameter"),
        ({"extra_body": {"moderation": {"mode": "block"}}}, "moderation", "unsupported_parameter"),
        ({"extra_body": {"verbosity": "low"}}, "verbosity", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "invalid_value",
        ),
        ({"tools": TOO_MANY_TOOLS}, "tools", "invalid_value"),
        ({"tools": TOOLS + TOOLS}, "tools", "invalid_value"),
        ({"logit_bias": {"word": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5", "invalid_value"),
        ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias", "invalid_value"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!"}}},
            "response_format.json_schema.json_schema.name",
            "invalid_value",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format", "invalid_value"),
        ({"extra_body": {"guided_regex": "a+"}}, "guided_regex", "unsupported_parameter"),
        ({"extra_body": {"structured_outputs": {}}}, "structured_outputs", "invalid_value"),
        (
            {"extra_body": {"structured_outputs": {"regex": "a", "choice": ["a"]}}},
            "structured_outputs",
            "invalid_value",
        ),
        ({"extra_body": {"structured_outputs": {"choice": []}}}, "structured_outputs", "invalid_value"),
        (
            {"extra_body": {"structured_outputs": {"choice": [str(i) for i in range(257)]}}},
            "structured_outputs",
            "invalid_value",
        ),
        (
            {"extra_body": {"structured_outputs": {"regex": "a" * 4097}}},
            "structured_outputs",
            "invalid_value",
        ),
        (
            {"extra_body": {"structured_outputs": {"grammar": "root ::= 'a'"}}},
            "grammar",
            "unsupported_parameter",
        ),
        (
            {
                "response_format": {"type": "json_object"},
                "extra_body": {"structured_outputs": {"regex": "a+"}},
            },
            "structured_outputs",
            "invalid_value",
        ),
    ],
)
def test_bad_fields_are_refused_by_name(
    default_client: openai.OpenAI, fields: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        default_client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            max_tokens=2,
            **fields,  # type: ignore[arg-type]
        )
    body: Any = refused.value.body
    assert body["param"].startswith(param.split(".")[0]) and body["code"] == code, body
    assert body["request_id"] == refused.value.response.headers["x-request-id"]


def test_neutral_values_fields_without_effect_and_unknown_fields_are_accepted(
    default_client: openai.OpenAI,
) -> None:
    without_effect = {
        "user": "u1",
        "metadata": {"team": "a"},
        "store": True,
        "service_tier": "auto",
        "safety_identifier": "s1",
        "prompt_cache_key": "k",
        "prompt_cache_options": {"ttl": "24h"},
        "prompt_cache_retention": "24h",
        "reasoning_effort": "low",
        "verbosity": "medium",
        "modalities": ["text"],
    }
    neutral = {"top_k": -1, "repetition_penalty": 1.0, "functions": None}
    completion = default_client.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=2,
        extra_body=without_effect | neutral | {"some_future_field": {"x": 1}},
    )
    assert completion.choices[0].message.content is not None


def test_a_regex_and_a_choice_are_honoured(default_client: openai.OpenAI) -> None:
    for model in (MODEL, POWER):
        regex = default_client.completions.create(
            model=model,
            prompt="The year is",
            max_tokens=8,
            seed=4,
            extra_body={"structured_outputs": {"regex": " (19|20)[0-9]{2}"}},
        )
        assert re.fullmatch(r" (19|20)[0-9]{2}", regex.choices[0].text), regex.choices[0].text
        choice = default_client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Is Paris in France?"}],
            max_tokens=4,
            seed=4,
            extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
        )
        assert choice.choices[0].message.content in ("yes", "no")


def test_a_schema_the_engine_cannot_compile_is_a_400(default_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        default_client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=4,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "broken", "schema": {"type": "no-such-type"}},
            },
        )
    for model in (MODEL, POWER):
        with pytest.raises(openai.BadRequestError):
            default_client.completions.create(
                model=model,
                prompt="a",
                max_tokens=4,
                extra_body={"structured_outputs": {"regex": "(unclosed"}},
            )


def test_every_response_carries_a_request_id(
    default_client: openai.OpenAI, default_service: ServiceProcess
) -> None:
    raw = default_client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ASK,
        max_tokens=2,  # type: ignore[arg-type]
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 0
    assert raw.parse()._request_id == raw.headers["x-request-id"]
    http = default_service.http
    mine = http.get(f"{default_service.url}/v1/models", headers={"x-request-id": "my-trace.42"})
    assert mine.headers["x-request-id"] == "my-trace.42"
    hostile = http.get(f"{default_service.url}/v1/models", headers={"x-request-id": "a b\tc" * 60})
    assert hostile.headers["x-request-id"].startswith("req_")
    missing = http.get(f"{default_service.url}/v1/models/nope", headers={"x-request-id": "trace-7"})
    assert missing.status_code == 404 and missing.json()["error"]["request_id"] == "trace-7"
    # The id is in the log lines written while serving the request (here: an unknown field).
    http.post(
        f"{default_service.base_url}/chat/completions",
        json={"model": MODEL, "messages": ASK, "max_tokens": 1, "field_never_seen_8": 1},
        headers={"x-request-id": "trace-8"},
    )
    lines = default_service.log_path.read_text(errors="replace").splitlines()
    assert any("[trace-8]" in line and "field_never_seen_8" in line for line in lines)
