"""The two completion resources: /v1/chat/completions and /v1/completions.

One object per endpoint, built once, holding what a completion request goes through whoever sends
it — an HTTP request, a batch line, a fine-tuning job's teacher:

    prepare   the body -> its route (as this caller may see it), token ids, cache control, format
    admit     the gate: admission control and the caller's limits, charged the worst case
    generate  the request path (service/pipeline): resolve, cache, engine
    settle    the caller is charged what the engine generated, the rest given back
    format    OpenAI's response object, or its stream of chunks

Charging: a finished answer costs what the engine generated for it (nothing when the cache answered);
a request that ended without an answer because the engine failed costs nothing; a request its
client cut short costs its whole reservation (the engine may have generated all of it already: a
power request's particles run unseen until the end), except a plain stream, whose streamed tokens
are what the engine generated before it was stopped.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ValidationError

from service.config import Settings
from service.engines.base import scheduling_priority
from service.engines.tool_parsers import ToolCallParser
from service.errors import (
    ContextLengthError,
    InvalidRequestError,
    PowerserveError,
    RateLimitedError,
    ServerOverloadedError,
)
from service.generation import Choice, ChoiceDelta, GenerationRequest, GenerationResult
from service.limits import Gate, Quota, Ticket
from service.pipeline import (
    CacheControl,
    CompletionService,
    ModelRoute,
    ResolvedRequest,
    RouteKind,
    StreamEvent,
)
from service.serving.caller import Caller
from service.serving.errors import error_body, error_of, validation_error_body
from service.serving.formats import ChatFormat, CompletionFormat, ResponseFormat
from service.serving.models import ModelsServing
from service.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Usage,
    new_id,
    now,
)
from service.serving.tools import ToolCalling

__all__ = [
    "CACHE_HEADER",
    "Answer",
    "ChatServing",
    "CompletionsServing",
    "Prepared",
    "StreamedAnswer",
    "TextCompletionServing",
]

logger = logging.getLogger(__name__)

CACHE_HEADER = "x-powerserve-cache"
# Offline work over its limits waits this long at most between tries (the window may reset sooner).
_OFFLINE_RETRY_MAX_S = 5.0

RequestT = TypeVar("RequestT", ChatCompletionRequest, CompletionRequest)


@dataclass(frozen=True)
class Prepared:
    """A parsed completion request, ready to serve."""

    route: ModelRoute
    generation: GenerationRequest
    control: CacheControl
    fmt: ResponseFormat
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Answer:
    """A whole response: its body and headers (cache status, the caller's quota)."""

    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class StreamedAnswer:
    """A streamed response: its chunks (OpenAI's ``*.chunk`` objects) and headers."""

    chunks: AsyncIterator[dict[str, Any]]
    headers: dict[str, str]


class CompletionsServing(abc.ABC, Generic[RequestT]):
    """What both completion endpoints share; subclasses turn their body into a ``Prepared``."""

    endpoint: ClassVar[str]
    request_type: type[RequestT]

    def __init__(
        self, pipeline: CompletionService, models: ModelsServing, gate: Gate, settings: Settings
    ):
        self.pipeline = pipeline
        self.renderer = pipeline.renderer
        self.models = models
        self.gate = gate
        self.settings = settings
        # With keys, cached answers are a project's own unless sharing them is asked for.
        self._partitioned = gate.keys.enabled and not settings.cache_shared_across_projects

    @abc.abstractmethod
    async def prepare(self, body: RequestT, caller: Caller) -> Prepared:
        """What this endpoint makes of a body; raises (a 4xx) before any work. Cheap checks come
        first; tokenising runs off the event loop (a long prompt must not stall it)."""

    async def create(self, prepared: Prepared, caller: Caller) -> Answer | StreamedAnswer:
        """Serve a prepared request, as one response or as a stream."""
        if prepared.stream:
            return await self.stream(prepared, caller)
        return await self.answer(prepared, caller)

    async def answer(self, prepared: Prepared, caller: Caller, *, offline: bool = False) -> Answer:
        """The whole response. ``offline`` work (a batch line, a job) over its limits or the
        server's capacity waits for room instead of failing."""
        response_id, created = new_id(prepared.fmt.id_prefix), now()
        resolved = self._resolve(prepared.route, prepared.generation, caller)
        control = self._control(prepared.control, caller)
        result, quota = await self._computed(resolved, control, caller, offline=offline)
        body = _body(result, prepared.fmt, response_id, created, prepared.route)
        return Answer(body, {CACHE_HEADER: result.cache, **quota.headers()})

    async def stream(self, prepared: Prepared, caller: Caller) -> StreamedAnswer:
        response_id, created, began = new_id(prepared.fmt.id_prefix), now(), time.monotonic()
        resolved = self._resolve(prepared.route, prepared.generation, caller)
        ticket = await self._admit(caller, resolved.worst_case_tokens, offline=False)
        try:
            control = self._control(prepared.control, caller)
            opened = await self.pipeline.stream(resolved, control, began=began)
        except BaseException:
            self.gate.release_soon(ticket, 0)
            raise
        plain = prepared.route.kind is not RouteKind.POWER
        events = self._settled(opened.events, ticket, replayed=opened.cache == "hit", plain=plain)
        chunks = _chunks(events, prepared, response_id, created)
        return StreamedAnswer(chunks, {CACHE_HEADER: opened.cache, **ticket.quota.headers()})

    async def answer_line(
        self, body: dict[str, Any], caller: Caller, *, priority: int
    ) -> tuple[int, dict[str, Any]]:
        """A batch line: (status, body) as ``POST <endpoint>`` with ``body`` from ``caller`` would
        answer, its engine requests at ``priority``, charged to ``caller``."""
        try:
            prepared = await self.prepare(self.request_type.model_validate(body), caller)
            if prepared.stream:
                raise InvalidRequestError("stream is not supported in a batch.", param="stream")
            with scheduling_priority(priority):
                answer = await self.answer(prepared, caller, offline=True)
            return 200, answer.body
        except ValidationError as exc:
            return 400, validation_error_body(exc.errors())
        except RecursionError:
            return 400, error_body(400, "The request is nested too deeply.", code="invalid_value")
        except PowerserveError as exc:
            return error_of(exc)
        except Exception:
            logger.exception("a batch line failed unexpectedly")
            return 500, error_body(500, "The server had an internal error.", code="internal_error")

    async def generate(
        self, model_id: str, request: GenerationRequest, caller: Caller
    ) -> GenerationResult:
        """One request's result without a response body (a fine-tuning job's teacher and
        evaluation requests): the same gate and request path as ``answer``, as offline work."""
        route = self.models.route(model_id, caller)
        # Not the key's power_budget: a job's sampler is the one its hyperparameters name.
        resolved = self.pipeline.resolve(route, request)
        control = self._control(CacheControl(), caller)
        result, _quota = await self._computed(resolved, control, caller, offline=True)
        return result

    # --- steps ------------------------------------------------------------------------------------

    def _check_choices(self, prompts: int, n: int) -> None:
        """Every choice is an engine sequence: bound them before any prompt is tokenised (one
        prompt may always ask for max_n)."""
        most = max(self.settings.max_choices, self.settings.max_n)
        if prompts * n > most:
            raise InvalidRequestError(
                f"This request asks for {prompts} prompt(s) x n={n} = {prompts * n} choices; the "
                f"most one request may ask for is {most}.",
                param="prompt" if prompts > 1 else "n",
                code="too_many_choices",
            )

    def _check_length(self, texts: list[str], param: str) -> None:
        """Refuse, before tokenising, a prompt that cannot fit the context whatever its tokens."""
        context = self.models.engine.info.max_model_len
        fewest = sum(self.renderer.fewest_tokens(text) for text in texts)
        if fewest >= context:
            raise ContextLengthError(
                f"The prompt is at least {fewest} tokens long, and this model's context length is "
                f"{context}.",
                param=param,
            )

    def _resolve(self, route: ModelRoute, request: GenerationRequest, caller: Caller) -> ResolvedRequest:
        """Step 1 of the request path, with the caller's key's power_budget and
        power_latency_target for a power request that sets none."""
        key = caller.key
        if route.kind is RouteKind.POWER and key is not None:
            if request.power_budget is None and key.power_budget is not None:
                request = replace(request, power_budget=key.power_budget)
            # A key's target sizes what the request leaves to the route; it does not refuse.
            if request.power_latency_target is None and not request.sizes_its_sampler:
                request = replace(request, power_latency_target=key.power_latency_target)
        return self.pipeline.resolve(route, request)

    def _control(self, control: CacheControl, caller: Caller) -> CacheControl:
        """The request's cache control, in the caller's project's partition of the cache."""
        if self._partitioned and caller.project is not None:
            return replace(control, partition=caller.project)
        return control

    async def _computed(
        self, resolved: ResolvedRequest, control: CacheControl, caller: Caller, *, offline: bool
    ) -> tuple[GenerationResult, Quota]:
        """Admit, compute and charge one request; (its result, the caller's quota after it)."""
        ticket = await self._admit(caller, resolved.worst_case_tokens, offline=offline)
        try:
            result = await self.pipeline.generate(resolved, control)
        except asyncio.CancelledError:
            self.gate.release_soon(ticket, ticket.tokens)  # cut short: see the module docstring
            raise
        except BaseException:
            self.gate.release_soon(ticket, 0)  # the engine failed: nothing to charge
            raise
        return result, await self.gate.release(ticket, _engine_tokens(result))

    async def _admit(self, caller: Caller, tokens: int, *, offline: bool) -> Ticket:
        while True:
            try:
                return await self.gate.admit(caller.identity, caller.key, tokens)
            except (RateLimitedError, ServerOverloadedError) as exc:
                if not offline or self._never_fits(caller, tokens):
                    raise
                await asyncio.sleep(min(_OFFLINE_RETRY_MAX_S, max(0.2, exc.retry_after or 1.0)))

    def _never_fits(self, caller: Caller, tokens: int) -> bool:
        """Whether ``tokens`` exceed the caller's whole per-minute budget (waiting cannot help)."""
        _, tpm = self.gate.limits_for(caller.key)
        return tpm is not None and tokens > tpm

    async def _settled(
        self, events: AsyncIterator[StreamEvent], ticket: Ticket, *, replayed: bool, plain: bool
    ) -> AsyncIterator[StreamEvent]:
        """The stream's events; when it ends its reservation is settled (module docstring)."""
        seen = 0
        charged: int | None = None
        try:
            async for event in events:
                if isinstance(event, ChoiceDelta) and not replayed:
                    seen += len(event.token_ids)
                elif isinstance(event, GenerationResult):
                    charged = _engine_tokens(event)
                yield event
        finally:
            if charged is None:  # cut short (or failed) before its end
                charged = 0 if replayed else (seen if plain else ticket.tokens)
            self.gate.release_soon(ticket, charged)


class ChatServing(CompletionsServing[ChatCompletionRequest]):
    endpoint = "/v1/chat/completions"
    request_type = ChatCompletionRequest

    def __init__(
        self, pipeline: CompletionService, models: ModelsServing, gate: Gate, settings: Settings
    ):
        super().__init__(pipeline, models, gate, settings)
        # How the model writes a tool call it chose to make (tool_choice auto).
        self.tool_parser = ToolCallParser(settings.tool_call_parser, self.renderer.tokenizer)

    async def prepare(self, body: ChatCompletionRequest, caller: Caller) -> Prepared:
        self._check_choices(1, body.n)
        route = self.models.route(body.model, caller)
        self.renderer.validate_ids(body.biased_token_ids(), param="logit_bias")
        tools = ToolCalling(body, self.tool_parser) if body.tools else None
        shown = tools.shown if tools is not None else None
        messages = [message.to_template() for message in body.messages]
        self._check_length([m["content"] for m in messages], "messages")
        prompt = await self.renderer.off_loop(lambda: self.renderer.encode_chat(messages, shown))
        constraint = (tools.constraint() if tools is not None else None) or body.format_constraint()
        generation = body.to_generation(prompt, constraint)
        fmt = ChatFormat(self.renderer, generation.logprobs, tools)
        return Prepared(route, generation, body.cache_control(), fmt, body.stream, body.include_usage)


class TextCompletionServing(CompletionsServing[CompletionRequest]):
    endpoint = "/v1/completions"
    request_type = CompletionRequest

    async def prepare(self, body: CompletionRequest, caller: Caller) -> Prepared:
        prompts = body.prompts()
        self._check_choices(len(prompts), body.n)
        route = self.models.route(body.model, caller)
        self.renderer.validate_ids(body.biased_token_ids(), param="logit_bias")
        for prompt in prompts:
            if isinstance(prompt, str):
                self._check_length([prompt], "prompt")
        ids = await self.renderer.off_loop(
            lambda: [
                self.renderer.encode_text(prompt) if isinstance(prompt, str) else list(prompt)
                for prompt in prompts
            ]
        )
        generation = body.to_generation(ids)
        fmt = CompletionFormat(self.renderer, generation.logprobs)
        return Prepared(route, generation, body.cache_control(), fmt, body.stream, body.include_usage)


# --- response bodies --------------------------------------------------------------------------------


def _engine_tokens(result: GenerationResult) -> int:
    """What a result cost the engine: nothing when the cache answered it."""
    return 0 if result.cache == "hit" else result.tokens_generated


def _body(
    result: GenerationResult, fmt: ResponseFormat, response_id: str, created: int, route: ModelRoute
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": fmt.object_name,
        "created": created,
        "model": route.model_id,
        "choices": [fmt.choice(choice) for choice in result.choices],
        "usage": _usage(result),
    } | _extensions(result)


async def _chunks(
    events: AsyncIterator[StreamEvent], prepared: Prepared, response_id: str, created: int
) -> AsyncIterator[dict[str, Any]]:
    fmt, route = prepared.fmt, prepared.route

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        head = {
            "id": response_id,
            "object": fmt.chunk_object_name,
            "created": created,
            "model": route.model_id,
        }
        return head | {"choices": choices} | extra

    started: set[int] = set()
    async for event in events:
        if isinstance(event, ChoiceDelta):
            entry = fmt.delta(event, first=event.index not in started)
            if entry is not None:
                yield chunk([entry])
                started.add(event.index)
        elif isinstance(event, Choice):
            if event.index not in started:  # ended before any delta: open it first
                opening = fmt.delta(ChoiceDelta(index=event.index), first=True)
                assert opening is not None
                yield chunk([opening])
                started.add(event.index)
            entry = fmt.finish(event) | {"self_reward": event.self_reward.to_json()}
            if event.sampler is not None and route.kind is RouteKind.POWER:
                entry["power"] = event.sampler.to_json()
            yield chunk([entry])
        elif prepared.include_usage:
            yield chunk([], usage=_usage(event), **_extensions(event))


def _usage(result: GenerationResult) -> dict[str, int]:
    completion = result.completion_tokens
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=completion,
        total_tokens=result.prompt_tokens + completion,
    ).model_dump()


def _extensions(result: GenerationResult) -> dict[str, Any]:
    """Beside usage: the self-reward on every route, and the power report on the power route."""
    reward = result.self_reward.to_json()
    extra: dict[str, Any] = {"self_reward": reward}
    if result.power is not None:
        extra["power"] = result.power.to_json() | {"self_reward": reward}
    return extra
