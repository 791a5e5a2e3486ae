"""Checks of third-party clients against a running powerserve (run in .venv-clients by
tests/clients/test_clients.py): LangChain's structured output, tools and Responses API, LiteLLM's
responses() and tool calls. Prints one JSON object: {check name: "ok" or the error}.

    python client_checks.py BASE_URL MODEL
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field


class City(BaseModel):
    """A city and its country."""

    name: Literal["Paris", "Rome", "Oslo"]
    country: str = Field(max_length=12)


class GetWeather(BaseModel):
    """Get the weather of a city."""

    city: Literal["Paris", "Rome", "Oslo"]


def langchain_structured_output(base_url: str, model: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=model, base_url=base_url, api_key="unused", max_tokens=48, seed=1)
    for method in ("json_schema", "function_calling"):
        city = chat.with_structured_output(City, method=method).invoke("Name a European city.")
        assert isinstance(city, City), (method, city)


def langchain_tools(base_url: str, model: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=model, base_url=base_url, api_key="unused", max_tokens=48, seed=2)
    tools = chat.bind_tools([GetWeather], tool_choice="required", parallel_tool_calls=False)
    answer = tools.invoke("Weather in Rome?")
    (call,) = answer.tool_calls
    assert call["name"] == "GetWeather" and GetWeather(**call["args"]), answer


def langchain_responses_api(base_url: str, model: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=model, base_url=base_url, api_key="unused", max_tokens=16, use_responses_api=True
    )
    answer = chat.invoke("Say hello.")
    assert isinstance(answer.text, str) and answer.text, answer
    streamed = "".join(chunk.text for chunk in chat.stream("Say hello."))
    assert streamed, "no streamed text"


def litellm_responses(base_url: str, model: str) -> None:
    import litellm

    response = litellm.responses(
        model=f"openai/{model}",
        input="Say hello.",
        api_base=base_url,
        api_key="unused",
        max_output_tokens=16,
    )
    assert response.output and response.output[0].content[0].text, response


def litellm_tool_call(base_url: str, model: str) -> None:
    import litellm

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": GetWeather.model_json_schema(),
        },
    }
    response = litellm.completion(
        model=f"openai/{model}",
        api_base=base_url,
        api_key="unused",
        max_tokens=48,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = response.choices[0].message.tool_calls[0]
    assert GetWeather(**json.loads(call.function.arguments)), call


CHECKS: dict[str, Callable[[str, str], None]] = {
    check.__name__: check
    for check in (
        langchain_structured_output,
        langchain_tools,
        langchain_responses_api,
        litellm_responses,
        litellm_tool_call,
    )
}


def main() -> None:
    base_url, model = sys.argv[1:3]
    results = {}
    for name, check in CHECKS.items():
        try:
            check(base_url, model)
            results[name] = "ok"
        except Exception:  # every failure is reported; none stops the others
            results[name] = traceback.format_exc(limit=4)[-2000:]
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
