"""The -distilled route: a LoRA adapter served by the same vLLM engine, its self-reward measured under
the base model so that it compares with the plain and power routes."""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest

from loadtests.tiny_model import VOCAB, ExactModel
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT

DISTILLED = f"{TINY_MODEL_NAME}-distilled"


def answer_ids(choice) -> tuple[int, ...]:
    return tuple(VOCAB[token] for token in choice.logprobs.tokens)


def test_distilled_answers_carry_the_base_models_self_reward(
    tiny_client: openai.OpenAI, tiny_model_dir: Path
) -> None:
    exact = ExactModel(tiny_model_dir, TINY_PROMPT)
    result = tiny_client.completions.create(
        model=DISTILLED, prompt=list(TINY_PROMPT), max_tokens=3, n=8, logprobs=0
    )
    assert "power" not in result.model_extra
    differs = False
    for choice in result.choices:
        ids = answer_ids(choice)
        base = exact.answer_logprob(ids)  # log p under the base model, by transformers
        reward = choice.model_extra["self_reward"]["sum_logprob"]
        assert reward == pytest.approx(base, abs=1e-3)
        # The listed log-probs are the adapter's own, which differ from the base model's.
        differs |= not math.isclose(sum(choice.logprobs.token_logprobs), base, abs_tol=1e-3)
    assert differs


def test_distilled_route_streams(tiny_client: openai.OpenAI) -> None:
    chunks = list(
        tiny_client.chat.completions.create(
            model=DISTILLED,
            messages=[{"role": "user", "content": "a b"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens >= 1
    assert chunks[-1].model_extra["self_reward"]["mean_logprob"] <= 0
