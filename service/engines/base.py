"""The engine contract: the one interface every route reaches the model through.

An engine turns a token-id prompt into generated tokens, each with its raw log-probability under the
model (no temperature, top-p or penalties applied) and, when asked, the top-k raw log-probabilities
of its position. Routes never see vLLM: plain sampling, the power sampler and the distilled model are
all built from ``generate`` calls, as vLLM's own beam search is built from its ``EngineClient``.

To add a backend, implement ``generate``, ``score`` and ``check_health`` (``start`` and ``close`` if
it holds resources); ``complete`` comes with it.
"""

from __future__ import annotations

import abc
import contextvars
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from service.errors import EngineError

__all__ = [
    "DISTILLED_ADAPTER",
    "LORA_TARGET_MODULES",
    "Constraint",
    "Engine",
    "EngineInfo",
    "Generated",
    "SamplingOptions",
    "current_priority",
    "derive_seed",
    "new_request_id",
    "scheduling_priority",
    "structured_outputs_fields",
]


# The name under which engines serve the power-self-distilled LoRA adapter (the -distilled route).
DISTILLED_ADAPTER = "distilled"
# The layers the project's LoRA adapters train (service/distill/train.py), which an engine that
# loads adapters while it runs must be ready to wrap.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


# The engine scheduling priority of the requests made in this context (lower runs first; 0 is
# interactive). Batch work sets it once around a whole answer, so every engine request of that
# answer (each MCMC proposal, each SMC step, the scoring pass) inherits it, tasks included.
_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("engine_priority", default=0)


def current_priority() -> int:
    return _PRIORITY.get()


@contextmanager
def scheduling_priority(priority: int) -> Iterator[None]:
    """Engine requests made inside run at ``priority`` (engines that cannot schedule by priority
    ignore it)."""
    token = _PRIORITY.set(priority)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def new_request_id(prefix: str = "gen") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def derive_seed(*parts: int | str) -> int:
    """A 63-bit engine seed from a request seed and the coordinates of one engine request.

    vLLM seeds neighbouring integers' streams so that they overlap (seeds 0..15 gave nearly the
    same samples), so every sample or MCMC proposal gets a hash of (seed, sample, step, ...) instead
    of ``seed + i``: well-separated seeds keep proposals independent and the chain unbiased.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class Constraint:
    """What an answer must match, enforced by the engine's structured outputs (a grammar that masks
    the tokens that cannot continue a match):

    json         ``spec`` is a JSON schema (as JSON text)
    json_object  any JSON object; ``spec`` is empty
    regex        ``spec`` is a regular expression
    choice       ``spec`` is a JSON list of the allowed answers

    Beware: the engine applies the mask before its sampler, so the log-probs it returns for a
    constrained request are renormalised over the allowed tokens, not the model's own.
    """

    kind: Literal["json", "json_object", "regex", "choice"]
    spec: str = ""


def structured_outputs_fields(constraint: Constraint) -> dict[str, Any]:
    """The constraint as vLLM's ``structured_outputs`` fields (``StructuredOutputsParams`` in
    process, the request body's ``structured_outputs`` of a ``vllm serve`` worker)."""
    if constraint.kind == "json_object":
        return {"json_object": True}
    if constraint.kind == "json":
        return {"json": constraint.spec}
    if constraint.kind == "choice":
        return {"choice": json.loads(constraint.spec)}
    return {"regex": constraint.spec}


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """How to sample one sequence. Keyword-only, so calls read as what they ask for::

    SamplingOptions(max_tokens=64, temperature=0.25, top_logprobs=20, seed=7)
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # How many raw top-k log-probs to return per position (0: only the sampled token's own).
    top_logprobs: int = 0
    # Name of a LoRA adapter the engine was started with; None = the base model.
    adapter: str | None = None
    # Decode text as tokens arrive. Off for MCMC proposals: they work on token ids only.
    detokenize: bool = True
    # Structured outputs: what the answer must match; None = anything.
    constraint: Constraint | None = None
    # OpenAI's logit_bias: (token id, bias added to its logit) pairs, sorted by token id.
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(kw_only=True)
class Generated:
    """Tokens of one sequence: a streamed increment, or (from ``complete``) the whole answer."""

    token_ids: list[int] = field(default_factory=list)
    # Raw log p(token | prefix) under the model, one per token.
    logprobs: list[float] = field(default_factory=list)
    # Per position, {token id: raw log p} of the top-k tokens (and the sampled one); empty unless
    # SamplingOptions.top_logprobs > 0.
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    text: str = ""
    # "stop" (EOS or a stop string), "length" (max_tokens), or None while the sequence runs.
    finish_reason: str | None = None

    def extend(self, more: Generated) -> None:
        self.token_ids += more.token_ids
        self.logprobs += more.logprobs
        self.top_logprobs += more.top_logprobs
        self.text += more.text
        self.finish_reason = more.finish_reason or self.finish_reason


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    """What routes need to know about the model behind an engine."""

    model_id: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    adapters: tuple[str, ...] = ()


class Engine(abc.ABC):
    """A model that generates from token-id prompts. Safe to call concurrently: implementations
    batch concurrent ``generate`` calls rather than serialise them."""

    info: EngineInfo

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Bring the engine up; ``info`` is valid afterwards."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's processes and connections."""

    @abc.abstractmethod
    def generate(
        self,
        prompt_ids: Sequence[int],
        options: SamplingOptions,
        *,
        request_id: str | None = None,
        stream: bool = False,
        affinity: str | None = None,
    ) -> AsyncIterator[Generated]:
        """Sample one sequence after ``prompt_ids``.

        With ``stream`` each item is an increment as tokens arrive; otherwise a single item holds
        the whole sequence. Cancelling the iterating task aborts the request in the engine.
        Requests with the same ``affinity`` (an MCMC chain's steps, which share prefixes) go to the
        same place where an engine has several, so that its prefix cache serves them.
        Raises ``EngineUnavailableError`` when the engine cannot serve, ``EngineError`` when this
        request failed.
        """

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Return when the engine can serve; raise ``EngineUnavailableError`` otherwise."""

    @abc.abstractmethod
    async def score(
        self, token_ids: Sequence[int], start: int, *, adapter: str | None = None
    ) -> list[float]:
        """Raw log p of ``token_ids[t]`` given ``token_ids[:t]``, for every ``t >= start``, under the
        base model or ``adapter``.

        One prefill pass. The distilled route calls it (service/pipeline/execute.py) to score its
        answers under the base model, so that their self-reward compares with the other routes',
        whose sampled log-probs already are the base model's.
        """

    def within_vocabulary(self, options: SamplingOptions) -> SamplingOptions:
        """``options`` asking for at most as many alternatives per token as the vocabulary has:
        more kill vLLM's engine core (top-k out of range). ``generate`` applies it."""
        k = min(options.top_logprobs, self.info.vocab_size)
        return options if k == options.top_logprobs else replace(options, top_logprobs=k)

    def num_running_requests(self) -> int:
        """Requests the engine holds now (queued or running); for metrics and tests."""
        return 0

    @property
    def adds_adapters(self) -> bool:
        """Whether ``add_adapter`` works: the engine was started able to serve LoRA adapters."""
        return False

    async def add_adapter(self, name: str, path: Path) -> None:
        """Serve the peft LoRA adapter in ``path`` as ``name`` from now on (a fine-tuned model)."""
        raise EngineError("This engine cannot load adapters while it runs.")

    async def complete(
        self,
        prompt_ids: Sequence[int],
        options: SamplingOptions,
        *,
        request_id: str | None = None,
        affinity: str | None = None,
    ) -> Generated:
        """Generate one whole sequence."""
        result = Generated()
        async for part in self.generate(prompt_ids, options, request_id=request_id, affinity=affinity):
            result.extend(part)
        return result
