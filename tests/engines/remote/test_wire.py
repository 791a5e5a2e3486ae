"""The remote engine's wire translation: request bodies, vLLM's answers as ``Generated``, prompt
log-probs and the prefix-cache ratio from a worker's Prometheus text."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from service.engines.base import Constraint, Generated, SamplingOptions
from service.engines.remote import wire


def test_completion_body_sets_every_sampling_parameter() -> None:
    options = SamplingOptions(
        max_tokens=9, temperature=0.25, top_p=0.9, stop=("\n",), seed=7, top_logprobs=20
    )
    body = wire.completion_body([0, 1], options, model="tiny-lora", max_tokens=5, stream=True)
    assert body == {
        "model": "tiny-lora",
        "prompt": [0, 1],
        "max_tokens": 5,  # what is left, not options.max_tokens: a resumed stream asks for less
        "temperature": 0.25,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop": ["\n"],
        "seed": 7,
        "logprobs": 20,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
        "skip_special_tokens": True,
        "stream": True,
    }
    assert (
        wire.completion_body([0], SamplingOptions(max_tokens=1), model="m", max_tokens=1, stream=False)[
            "stop"
        ]
        is None
    )


@pytest.mark.parametrize(
    ("constraint", "fields"),
    [
        (Constraint("json", '{"type": "object"}'), {"json": '{"type": "object"}'}),
        (Constraint("json_object"), {"json_object": True}),
        (Constraint("regex", "[ab]+"), {"regex": "[ab]+"}),
        (Constraint("choice", '["a", "b"]'), {"choice": ["a", "b"]}),
    ],
)
def test_constraints_and_logit_bias_go_in_the_fields_workers_read(
    constraint: Constraint, fields: dict[str, object]
) -> None:
    options = SamplingOptions(max_tokens=4, constraint=constraint, logit_bias=((3, -100.0), (7, 5.0)))
    body = wire.completion_body([0], options, model="m", max_tokens=4, stream=False)
    assert body["structured_outputs"] == fields
    assert body["logit_bias"] == {"3": -100.0, "7": 5.0}


def test_a_completion_becomes_generated_with_raw_logprobs_by_token_id() -> None:
    result = {
        "choices": [
            {
                "text": "b c",
                "token_ids": [1, 2],
                "finish_reason": "length",
                "logprobs": {
                    "tokens": ["token_id:1", "token_id:2"],
                    "token_logprobs": [-0.5, -1.25],
                    "top_logprobs": [
                        {"token_id:1": -0.5, "token_id:0": -1.0},
                        {"token_id:2": -1.25, "token_id:3": -0.75},
                    ],
                },
            }
        ]
    }
    assert wire.to_generated(result) == Generated(
        token_ids=[1, 2],
        logprobs=[-0.5, -1.25],
        top_logprobs=[{1: -0.5, 0: -1.0}, {2: -1.25, 3: -0.75}],
        text="b c",
        finish_reason="length",
    )


def test_a_stream_chunk_without_token_ids_takes_them_from_the_logprob_tokens() -> None:
    chunk = {
        "choices": [
            {
                "text": "a",
                "finish_reason": None,
                "logprobs": {"tokens": ["token_id:0"], "token_logprobs": [-0.1], "top_logprobs": None},
            }
        ]
    }
    part = wire.to_generated(chunk)
    assert (part.token_ids, part.logprobs, part.top_logprobs, part.finish_reason) == (
        [0],
        [-0.1],
        [],
        None,
    )


def test_an_empty_final_chunk_is_only_a_finish_reason() -> None:
    part = wire.to_generated({"choices": [{"text": "", "finish_reason": "stop", "logprobs": None}]})
    assert part == Generated(finish_reason="stop")


def test_prompt_logprobs_from_the_score_pass() -> None:
    body = wire.score_body([0, 1, 2, 3], model="tiny")
    assert body["prompt"] == [0, 1, 2, 3] and body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
    rows = [None, {"1": {"logprob": -0.5}}, {"2": {"logprob": -1.5}}, {"3": {"logprob": -2.5}}]
    result = {"choices": [{"prompt_logprobs": rows}]}
    assert wire.prompt_logprobs(result, [0, 1, 2, 3], 2) == [-1.5, -2.5]
    assert wire.prompt_logprobs(result, [0, 1, 2, 3], 0) == [-0.5, -1.5, -2.5]  # token 0 has none


def test_max_model_len_from_the_models_list() -> None:
    models = json.dumps({"object": "list", "data": [{"id": "tiny", "max_model_len": 64}]}).encode()
    assert wire.max_model_len(models) == 64
    with pytest.raises(KeyError):
        wire.max_model_len(b'{"data": [{"id": "tiny"}]}')


def vllm_metrics(hits: dict[str, float], queries: dict[str, float]) -> str:
    """Prometheus text as a vLLM worker writes it: counters per engine, with _created series."""
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    hit = Counter("vllm:prefix_cache_hits", "Prefix cache hits.", labels, registry=registry)
    query = Counter("vllm:prefix_cache_queries", "Prefix cache queries.", labels, registry=registry)
    other = Counter("vllm:external_prefix_cache_hits", "Not ours.", labels, registry=registry)
    for engine, value in hits.items():
        hit.labels("tiny", engine).inc(value)
        other.labels("tiny", engine).inc(1000)
    for engine, value in queries.items():
        query.labels("tiny", engine).inc(value)
    return generate_latest(registry).decode()


def test_prefix_cache_hit_ratio_sums_the_engines() -> None:
    text = vllm_metrics({"0": 30, "1": 10}, {"0": 60, "1": 40})
    assert wire.prefix_cache_hit_ratio(text) == pytest.approx(0.4)


def test_prefix_cache_hit_ratio_is_unknown_before_any_query() -> None:
    assert wire.prefix_cache_hit_ratio(vllm_metrics({}, {})) is None
    assert wire.prefix_cache_hit_ratio("") is None
