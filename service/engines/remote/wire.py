"""What goes over the wire to a worker and back: vLLM's OpenAI JSON <-> the engine contract.

Requests carry token-id prompts and ask for raw log-probs with token ids (``return_tokens_as_token_ids``,
``return_token_ids``), so every route, the power sampler included, works as on the local engine.
A worker's error messages reach clients only through ``client_message``, which keeps what a client
can act on and drops the worker's internals (URLs, hosts, ports, file paths, tracebacks).
Pure functions of their arguments: no I/O here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from service.engines.base import Generated, SamplingOptions, structured_outputs_fields

__all__ = [
    "client_message",
    "completion_body",
    "load_adapter_body",
    "max_model_len",
    "prefix_cache_hit_ratio",
    "prompt_logprobs",
    "score_body",
    "served_models",
    "to_generated",
]

# With return_tokens_as_token_ids, vLLM names each token "token_id:<id>", not by its text.
_TOKEN_PREFIX = "token_id:"


def completion_body(
    prompt: Sequence[int], options: SamplingOptions, *, model: str, max_tokens: int, stream: bool
) -> dict[str, Any]:
    """A /v1/completions request that samples as ``options`` asks, from ``model`` (the served model
    or an adapter's name)."""
    return {
        "model": model,
        "prompt": list(prompt),
        "max_tokens": max_tokens,
        # Every sampling parameter explicit: the workers apply no defaults of their own.
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "stop": list(options.stop) or None,
        "seed": options.seed,
        "logprobs": options.top_logprobs,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
        "skip_special_tokens": True,
        "stream": stream,
    } | _constraints(options)


def _constraints(options: SamplingOptions) -> dict[str, Any]:
    """Structured outputs and logit bias, in the fields a ``vllm serve`` worker reads."""
    fields: dict[str, Any] = {}
    if options.constraint is not None:
        fields["structured_outputs"] = structured_outputs_fields(options.constraint)
    if options.logit_bias:
        fields["logit_bias"] = {str(token): bias for token, bias in options.logit_bias}
    return fields


def score_body(token_ids: Sequence[int], *, model: str) -> dict[str, Any]:
    """A /v1/completions request for the log-prob of every prompt token (one prefill pass)."""
    return {
        "model": model,
        "prompt": list(token_ids),
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": 0,
    }


def to_generated(result: dict[str, Any]) -> Generated:
    """A vLLM completion (or stream chunk) as the engine contract's ``Generated``."""
    choice = result["choices"][0]
    logprobs = choice.get("logprobs") or {}
    token_ids = choice.get("token_ids") or [_token_id(t) for t in logprobs.get("tokens", [])]
    tops = logprobs.get("top_logprobs") or []
    return Generated(
        token_ids=list(token_ids),
        logprobs=[float(lp) for lp in logprobs.get("token_logprobs", [])],
        top_logprobs=[{_token_id(t): float(lp) for t, lp in (top or {}).items()} for top in tops],
        text=choice.get("text") or "",
        finish_reason=choice.get("finish_reason"),
    )


def prompt_logprobs(result: dict[str, Any], token_ids: Sequence[int], start: int) -> list[float]:
    """From the answer to ``score_body``: log p of ``token_ids[t]`` for every ``t >= start`` (the
    first token has none)."""
    rows = result["choices"][0]["prompt_logprobs"]
    return [float(rows[t][str(token_ids[t])]["logprob"]) for t in range(max(start, 1), len(token_ids))]


def max_model_len(models: bytes) -> int:
    """The context length a worker serves, from its /v1/models answer."""
    return int(json.loads(models)["data"][0]["max_model_len"])


def served_models(models: bytes) -> set[str]:
    """The ids a worker serves (its base model and the LoRA adapters it holds), from /v1/models."""
    return {str(card["id"]) for card in json.loads(models)["data"]}


def load_adapter_body(name: str, path: str) -> dict[str, Any]:
    """The body of a worker's POST /v1/load_lora_adapter (vLLM's runtime LoRA loading)."""
    return {"lora_name": name, "lora_path": path}


def prefix_cache_hit_ratio(metrics_text: str) -> float | None:
    """Share of prompt tokens served from the prefix cache, from a worker's /metrics (vLLM's
    counters, summed over its engines); None before it has served any."""
    totals = {"vllm:prefix_cache_hits_total": 0.0, "vllm:prefix_cache_queries_total": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    queries = totals["vllm:prefix_cache_queries_total"]
    return totals["vllm:prefix_cache_hits_total"] / queries if queries else None


# What of a worker's message is the deployment's, not the client's: cut or replaced by _HIDDEN.
_HIDDEN = "[...]"
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.DOTALL)
_FRAME = re.compile(r'File "[^"]*", line \d+(?:, in [\w<>.]+)?')
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>)\]]+")
_USERINFO = re.compile(r"[\w.%+-]+:[^\s@/]*@")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\](?::\d+)?")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b")
_HOST_PORT = re.compile(r"\b(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::\d{1,5})\b")
_PATH = re.compile(r"(?:~|\b[A-Za-z]:)?(?:[/\\][\w.@+-]+){2,}[/\\]?")
_MAX_MESSAGE = 500


def client_message(error_body: str) -> str | None:
    """What a client may read of a worker's refusal (a 4xx that is the request's fault): the message of
    vLLM's error JSON (``{"error": {"message": ...}}``, or ``{"message": ...}`` of older versions),
    without URLs, hosts, ports, file paths or tracebacks, on one line and at most 500 characters. None
    when the body is not such JSON (a proxy's page, say): then the caller says it in its own words."""
    try:
        parsed = json.loads(error_body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    message = (error if isinstance(error, dict) else parsed).get("message")
    if not isinstance(message, str):
        return None
    message = _TRACEBACK.sub("", message)
    for pattern in (_FRAME, _URL, _USERINFO, _IPV6, _IPV4, _HOST_PORT, _PATH):
        message = pattern.sub(_HIDDEN, message)
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3].rstrip() + "..."
    return message or None


def _token_id(key: str) -> int:
    return int(key.removeprefix(_TOKEN_PREFIX))
