"""The OpenAI API of the plain route, through the official `openai` client against a running server
on the tiny model (vLLM CPU engine)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

# Seeded requests are cached; tests of the engine's own reproducibility must not read the cache.
from loadtests.bench_power import UNCACHED
from loadtests.tiny_model import EOS, WORDS
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT

MODEL = TINY_MODEL_NAME


def test_models_lists_every_route(tiny_client: openai.OpenAI) -> None:
    ids = [model.id for model in tiny_client.models.list().data]
    assert ids == [MODEL, f"{MODEL}-power", f"{MODEL}-distilled"]
    card = tiny_client.models.retrieve(f"{MODEL}-power")
    assert (card.id, card.model_extra["route"], card.model_extra["root"]) == (
        f"{MODEL}-power",
        "power",
        MODEL,
    )


def test_completion_text_usage_and_finish_reason(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(model=MODEL, prompt="a b", max_tokens=5, seed=1)
    choice = result.choices[0]
    assert set(choice.text.split()) <= set(WORDS)
    assert choice.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens == 2
    words = len(choice.text.split())
    # An EOS ending counts as a generated token but adds no text.
    assert result.usage.completion_tokens == words + (choice.finish_reason == "stop")
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    if choice.finish_reason == "length":
        assert result.usage.completion_tokens == 5


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("a b", 1),
        (["a b", "c", "a a a"], 3),
        (list(TINY_PROMPT), 1),
        ([[0, 1], [2], [1, 1, 1]], 3),
    ],
    ids=["text", "texts", "token-ids", "token-id-lists"],
)
def test_completion_prompt_forms(tiny_client: openai.OpenAI, prompt: object, prompts: int) -> None:
    result = tiny_client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, n=2)
    assert sorted(c.index for c in result.choices) == list(range(2 * prompts))
    expected_prompt_tokens = {1: 2, 3: 6}[prompts]
    assert result.usage.prompt_tokens == expected_prompt_tokens


def test_chat_completion_uses_the_chat_template(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a b"}],
        max_tokens=4,
        seed=3,
    )
    message = result.choices[0].message
    assert message.role == "assistant"
    assert set(message.content.split()) <= set(WORDS)
    # The tiny template renders each message's content followed by a space: "a b " -> 2 tokens.
    assert result.usage.prompt_tokens == 2


def test_max_completion_tokens_caps_the_answer(tiny_client: openai.OpenAI) -> None:
    results = [
        tiny_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "a"}],
            max_completion_tokens=2,
            seed=s,
        )
        for s in range(8)
    ]
    assert all(r.usage.completion_tokens <= 2 for r in results)
    assert any(r.choices[0].finish_reason == "length" for r in results)


def test_n_returns_independent_choices(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(model=MODEL, prompt="a b", max_tokens=3, n=3, seed=5)
    assert [c.index for c in result.choices] == [0, 1, 2]
    many = tiny_client.completions.create(model=MODEL, prompt="a b", max_tokens=3, n=16, seed=6)
    assert len({c.text for c in many.choices}) > 1  # seeded per choice, not one shared stream


def test_same_seed_same_output_other_seed_other_output(tiny_client: openai.OpenAI) -> None:
    def sample(seed: int) -> list[str]:
        result = tiny_client.completions.create(
            model=MODEL, prompt="a", max_tokens=3, n=4, seed=seed, extra_body=UNCACHED
        )
        return [c.text for c in result.choices]

    assert sample(42) == sample(42)
    assert any(sample(seed) != sample(42) for seed in (43, 44, 45))


def test_stop_string_ends_the_answer(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(
        model=MODEL, prompt="a b", max_tokens=3, n=32, stop=["b"], seed=9
    )
    assert all("b" not in c.text for c in result.choices)
    stopped = [c for c in result.choices if c.finish_reason == "stop"]
    assert stopped


def test_chat_logprobs_are_raw_and_sum_to_the_self_reward(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a b"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
        temperature=0.5,
        seed=11,
    )
    choice = result.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == result.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.token in (*WORDS, EOS)
    # Raw log-probs (before temperature) are what the self-reward sums.
    self_reward = choice.model_extra["self_reward"]
    assert math.isclose(self_reward["sum_logprob"], sum(e.logprob for e in entries), rel_tol=1e-6)


def test_completion_logprobs_legacy_layout(tiny_client: openai.OpenAI) -> None:
    result = tiny_client.completions.create(model=MODEL, prompt="a b", max_tokens=3, logprobs=3, seed=2)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert all(len(alternatives) == 3 for alternatives in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0


def test_streaming_chat_with_usage_matches_the_non_streamed_answer(
    tiny_client: openai.OpenAI,
) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "a b"}], max_tokens=6, seed=21)
    whole = tiny_client.chat.completions.create(**kwargs, extra_body=UNCACHED)
    chunks = list(
        tiny_client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}, extra_body=UNCACHED
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens


def test_streaming_completion_n3_without_usage(tiny_client: openai.OpenAI) -> None:
    chunks = list(
        tiny_client.completions.create(model=MODEL, prompt="a", max_tokens=4, n=3, stream=True, seed=4)
    )
    assert all(c.usage is None for c in chunks)
    finished = {c.choices[0].index for c in chunks if c.choices[0].finish_reason}
    assert finished == {0, 1, 2}


def test_sse_wire_format_ends_with_done(tiny_service) -> None:
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{tiny_service.base_url}/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_unknown_fields_are_ignored(tiny_service) -> None:
    body = {
        "model": MODEL,
        "prompt": "a",
        "max_tokens": 2,
        "logit_bias": {},
        "some_new_field": [1, 2],
    }
    response = httpx.post(f"{tiny_service.base_url}/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
