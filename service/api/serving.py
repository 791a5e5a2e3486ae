"""What both completion endpoints share: serve a request on its route, as JSON or as SSE chunks.

The endpoints differ only in how a choice, a delta and a log-prob listing look (``ResponseFormat``);
the rest (cancellation on disconnect, usage, the ``self_reward`` and ``power`` extensions, the
streamed finish and usage chunks, keep-alive comments, the cache header) is here once.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.api.deps import Services
from service.api.protocol import Usage, new_id, now
from service.api.streaming import ClientDisconnected, cancel_on_disconnect, event_stream
from service.generation import Choice, ChoiceDelta, GenerationRequest, GenerationResult
from service.limits import ApiKey, Gate, Ticket
from service.pipeline import CacheControl, ModelRoute, RouteKind, StreamEvent
from service.prompts import PromptRenderer

__all__ = ["CACHE_HEADER", "Prepared", "ResponseFormat", "answer_body", "engine_tokens", "respond"]

CACHE_HEADER = "x-powerserve-cache"


class ResponseFormat(abc.ABC):
    """The shape of one endpoint's responses."""

    object_name: str
    chunk_object_name: str
    id_prefix: str

    def __init__(self, renderer: PromptRenderer, top_logprobs: int | None):
        self.renderer = renderer
        # None: the request asked for no log-probs; k: each token's, with k alternatives.
        self.top_logprobs = top_logprobs

    @abc.abstractmethod
    def choice(self, choice: Choice) -> dict[str, Any]:
        """A whole choice of a non-streamed response."""

    @abc.abstractmethod
    def delta(self, delta: ChoiceDelta, *, first: bool) -> dict[str, Any]:
        """A streamed increment of a choice; ``first`` for the choice's first chunk."""

    @abc.abstractmethod
    def finish(self, choice: Choice) -> dict[str, Any]:
        """The chunk entry that ends a streamed choice."""

    def alternatives(self, top: dict[int, float]) -> list[tuple[int, float]]:
        """The k most likely tokens of a position, best first."""
        ranked = sorted(top.items(), key=lambda item: item[1], reverse=True)
        return ranked[: self.top_logprobs or 0]


@dataclass(frozen=True)
class Prepared:
    """A parsed completion request, ready to serve: what an endpoint makes of its body (the HTTP
    route and a batch line alike)."""

    route: ModelRoute
    generation: GenerationRequest
    control: CacheControl
    fmt: ResponseFormat
    stream: bool
    include_usage: bool


async def answer_body(services: Services, prepared: Prepared) -> tuple[dict[str, Any], str]:
    """Serve a prepared request whole: the response body, and its cache status (hit, miss, bypass).
    Raises the service's errors (a 4xx before any work starts)."""
    fmt, route = prepared.fmt, prepared.route
    response_id, created = new_id(fmt.id_prefix), now()
    completions = services.completions
    resolved = completions.resolve(route, prepared.generation)
    result = await completions.generate(resolved, prepared.control)
    return _body(result, fmt, response_id, created, route), result.cache


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


async def respond(
    request: Request,
    services: Services,
    route: ModelRoute,
    generation: GenerationRequest,
    control: CacheControl,
    fmt: ResponseFormat,
    *,
    stream: bool,
    include_usage: bool,
) -> Response:
    request.state.route = route  # for the request metrics (api/observe.py)
    response_id, created, began = new_id(fmt.id_prefix), now(), time.monotonic()
    completions = services.completions
    resolved = completions.resolve(route, generation)  # a bad request raises here: a 4xx
    # Admission control and the key's limits (429/503 raise here), charged the worst case.
    gate: Gate = request.app.state.gate
    ticket = await gate.admit(_identity(request), _api_key(request), resolved.worst_case_tokens)
    if stream:
        try:
            opened = await completions.stream(resolved, control, began=began)
        except BaseException:
            gate.release_soon(ticket, 0)
            raise
        events = _settled(opened.events, gate, ticket, replayed=opened.cache == "hit")
        chunks = _chunks(events, fmt, response_id, created, route, include_usage)
        return event_stream(chunks, headers={CACHE_HEADER: opened.cache, **ticket.quota.headers()})

    try:
        result = await cancel_on_disconnect(request, completions.generate(resolved, control))
    except BaseException as exc:
        # Ended without an answer (client gone, engine error): charged nothing it was not seen
        # to generate; the engine work is aborted already.
        gate.release_soon(ticket, 0)
        if isinstance(exc, ClientDisconnected):
            return Response(status_code=499)  # nobody is listening; the work has been cancelled
        raise
    quota = await gate.release(ticket, engine_tokens(result))
    body = _body(result, fmt, response_id, created, route)
    return JSONResponse(body, headers={CACHE_HEADER: result.cache, **quota.headers()})


def engine_tokens(result: GenerationResult) -> int:
    """What a result cost the engine: nothing when the cache answered it."""
    return 0 if result.cache == "hit" else result.tokens_generated


def _api_key(request: Request) -> ApiKey | None:
    return getattr(request.state, "api_key", None)  # set by api/guards.py's KeyCheck


def _identity(request: Request) -> str:
    """Whom the rate limits count: the key's name, or without keys the client's address."""
    key = _api_key(request)
    if key is not None:
        return f"key:{key.name}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


async def _settled(
    events: AsyncIterator[StreamEvent], gate: Gate, ticket: Ticket, *, replayed: bool
) -> AsyncIterator[StreamEvent]:
    """The stream's events; when it ends, finished or cancelled, its reservation is settled with
    the tokens the engine generated (a cut stream: the tokens it streamed so far; a replay of a
    cached answer: none)."""
    seen = 0
    try:
        async for event in events:
            if isinstance(event, ChoiceDelta) and not replayed:
                seen += len(event.token_ids)
            elif isinstance(event, GenerationResult):
                seen = engine_tokens(event)
            yield event
    finally:
        gate.release_soon(ticket, seen)


async def _chunks(
    events: AsyncIterator[StreamEvent],
    fmt: ResponseFormat,
    response_id: str,
    created: int,
    route: ModelRoute,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
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
            yield chunk([fmt.delta(event, first=event.index not in started)])
            started.add(event.index)
        elif isinstance(event, Choice):
            if event.index not in started:  # ended before any delta: open it first
                yield chunk([fmt.delta(ChoiceDelta(index=event.index), first=True)])
                started.add(event.index)
            entry = fmt.finish(event) | {"self_reward": event.self_reward.to_json()}
            if event.sampler is not None and route.kind is RouteKind.POWER:
                entry["power"] = event.sampler.to_json()
            yield chunk([entry])
        elif include_usage:
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
