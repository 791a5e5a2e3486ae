"""The embedded default model (SmolLM2-135M-Instruct) served end to end, as a new user would (the
README's and the manual's examples run in tests/test_docs.py)."""

from __future__ import annotations

import openai

from loadtests.harness import ServiceProcess

MODEL = "smollm2-135m-instruct"


def test_default_model_is_served_with_its_routes(default_client: openai.OpenAI) -> None:
    ids = {model.id for model in default_client.models.list().data}
    assert {MODEL, f"{MODEL}-power"} <= ids


def test_chat_answers_in_words(default_client: openai.OpenAI) -> None:
    result = default_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=12,
        temperature=0,
    )
    answer = result.choices[0].message.content
    assert "Paris" in answer
    assert result.usage.prompt_tokens > 20  # the chat template's system turn is there


def test_chat_streams_with_usage(default_client: openai.OpenAI) -> None:
    stream = default_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        seed=0,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) >= 3
    assert chunks[-1].usage.completion_tokens <= 24


def test_the_engine_is_warmed_up_before_the_service_is_ready(default_service: ServiceProcess) -> None:
    log = default_service.log_path.read_text(errors="replace")
    assert "warming up" not in log, "a kind of request failed to warm up"
    assert log.index("engine warmed up in") < log.index("serving ['smollm2-135m-instruct'")
