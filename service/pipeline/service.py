"""A completion request from start to end: resolve → cache policy → generate → record.

``CompletionService.generate`` and ``.stream`` read top to bottom as the steps a request takes, each
in the module named after it:

    resolve.py   defaults, checks and the token budget, before any work starts
    caching.py   whether the response cache may answer, and under which key
    execute.py   the choices, generated on the engine (plain sampling or a power sampler)
    metrics      what a computed answer cost and got (service.metrics.record)

Identical concurrent requests that may be cached are computed once (single-flight, per process).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

from service.cache import SingleFlight
from service.config import Settings
from service.engines.base import DISTILLED_ADAPTER, Engine, current_priority
from service.generation import Choice, ChoiceDelta, GenerationRequest, GenerationResult
from service.metrics import record
from service.pipeline.caching import CacheControl, CachePolicy, ResultCache, replay
from service.pipeline.catalog import ModelRoute, RouteKind, find_route, model_routes
from service.pipeline.execute import ChoiceGenerator
from service.pipeline.latency import LatencyEstimates, sampler_size
from service.pipeline.resolve import ResolvedRequest, resolve
from service.prompts import PromptRenderer

__all__ = ["AnswerStream", "CompletionService", "StreamEvent"]

_NO_CONTROL = CacheControl()  # the request said nothing about the cache

# What a stream carries: deltas, each whole choice as it ends, and the result last.
StreamEvent = ChoiceDelta | Choice | GenerationResult


@dataclass
class AnswerStream:
    """A streamed answer: its cache status (known before the first byte) and its events."""

    cache: str
    events: AsyncIterator[StreamEvent]


# How long a resolved request counts toward the load before it starts computing, and how many such
# requests are counted at most.
_PENDING_S = 2.0
_PENDING_MAX = 4096


class CompletionService:
    def __init__(
        self,
        engine: Engine,
        renderer: PromptRenderer,
        settings: Settings,
        cache: ResultCache,
    ):
        self.engine = engine
        self.renderer = renderer
        self.settings = settings
        self.cache = cache
        self.generator = ChoiceGenerator(engine, renderer)
        self.routes = model_routes(
            engine.info.model_id, distilled=DISTILLED_ADAPTER in engine.info.adapters
        )
        self._flight: SingleFlight[GenerationResult] = SingleFlight()
        # Answers being computed at interactive priority (0) now, and when the last one ended
        # (time.monotonic): batch work yields to them.
        self.interactive_in_flight = 0
        self.interactive_ended_at = float("-inf")
        # Engine sequences the answers being computed now run (or are about to start): with the
        # engine's own count, the load that sizes the power route's default N.
        self.sequences_in_flight = 0
        # Sequences of requests resolved but not computing yet, by id(resolved): a burst of
        # arrivals resolves before any of it reaches the engine. An entry leaves when its request
        # starts computing, or after _PENDING_S (one answered from the cache never does).
        self._pending: dict[int, tuple[float, int]] = {}
        # What recent answers took, by sampler and size: what power_latency_target is fitted to.
        self.latency = LatencyEstimates()

    def interactive_busy(self, within_s: float) -> bool:
        """Whether an interactive answer is being computed, or ended less than ``within_s`` ago
        (a client's next request usually follows its last one closely)."""
        recent = time.monotonic() - self.interactive_ended_at < within_s
        return self.interactive_in_flight > 0 or recent

    def _observe(self, resolved: ResolvedRequest, result: GenerationResult, seconds: float) -> None:
        """Learn from a computed answer what its sampler and size take per token (its choices
        run at once, so the longest one sets the time)."""
        tokens = max((len(choice.token_ids) for choice in result.choices), default=0)
        power, sampling = resolved.power, resolved.sampling
        if power is not None and power.constraint is None:
            self.latency.observe(*sampler_size(power), seconds, tokens)
        elif resolved.route.kind is RouteKind.PLAIN and sampling and sampling.constraint is None:
            self.latency.observe("plain", 1, seconds, tokens)

    @contextmanager
    def _computing(self, resolved: ResolvedRequest) -> Iterator[None]:
        interactive = current_priority() == 0
        self.interactive_in_flight += interactive
        self.sequences_in_flight += resolved.sequences
        self._pending.pop(id(resolved), None)
        try:
            yield
        finally:
            self.interactive_in_flight -= interactive
            self.sequences_in_flight -= resolved.sequences
            if interactive:
                self.interactive_ended_at = time.monotonic()

    def route(self, model: str) -> ModelRoute:
        return find_route(model, self.routes)

    def add_route(self, route: ModelRoute) -> None:
        """Serve one more model (a fine-tuned adapter the engine has just been given)."""
        if all(known.model_id != route.model_id for known in self.routes):
            self.routes = (*self.routes, route)

    def remove_route(self, model_id: str) -> None:
        """Stop serving a model added with ``add_route`` (its job failed after all)."""
        self.routes = tuple(route for route in self.routes if route.model_id != model_id)

    def resolve(self, route: ModelRoute, request: GenerationRequest) -> ResolvedRequest:
        """Step 1; raises (a 4xx) before any work starts."""
        for prompt in request.prompts:
            self.renderer.validate_ids(prompt, param=request.prompt_param)
        # The engine's count misses answers whose requests are not submitted yet (a burst of
        # arrivals), ours misses work the engine holds for others (a fine-tuning job's evaluation).
        now = time.monotonic()
        self._pending = {k: v for k, v in self._pending.items() if now - v[0] < _PENDING_S}
        pending = sum(sequences for _, sequences in self._pending.values())
        load = max(self.engine.num_running_requests(), self.sequences_in_flight) + pending
        resolved = resolve(
            route, request, self.settings, self.engine.info, load=load, latency=self.latency
        )
        if len(self._pending) < _PENDING_MAX:
            self._pending[id(resolved)] = (now, resolved.sequences)
        return resolved

    async def generate(
        self, resolved: ResolvedRequest, control: CacheControl = _NO_CONTROL
    ) -> GenerationResult:
        kind = resolved.route.kind
        policy = self.cache.policy(resolved, control)
        if policy is None:
            record.cache_lookup(kind, "bypass")
            return await self._compute(resolved)
        if (cached := await self.cache.lookup(policy)) is not None:
            record.cache_lookup(kind, "hit")
            return cached
        result, shared = await self._flight.run(
            policy.key, lambda: self._compute_and_store(resolved, policy)
        )
        record.cache_lookup(kind, "hit" if shared else "miss")
        return replace(result, cache="hit" if shared else "miss")

    async def stream(
        self,
        resolved: ResolvedRequest,
        control: CacheControl = _NO_CONTROL,
        *,
        began: float | None = None,
    ) -> AnswerStream:
        """Open the stream of a resolved request (``began``: when it arrived, for the time to first
        token). A hit is known before the first byte: a request identical to one being computed
        waits for that result here, and replays it."""
        kind = resolved.route.kind
        began = time.monotonic() if began is None else began
        policy = self.cache.policy(resolved, control)
        if policy is None:
            record.cache_lookup(kind, "bypass")
            return AnswerStream("bypass", _timed(self._stream_computed(resolved, None), kind, began))
        cached = await self.cache.lookup(policy)
        if cached is None:
            shared = await self._flight.wait(policy.key)
            cached = None if shared is None else replace(shared, cache="hit")
        if cached is not None:
            record.cache_lookup(kind, "hit")
            return AnswerStream("hit", _timed(replay(cached, self.renderer), kind, began))
        record.cache_lookup(kind, "miss")
        return AnswerStream("miss", _timed(self._stream_computed(resolved, policy), kind, began))

    async def _compute(self, resolved: ResolvedRequest) -> GenerationResult:
        began = time.monotonic()
        with record.in_flight(resolved.route.kind), self._computing(resolved):
            choices = [
                c async for c in self.generator.choices(resolved, stream=False) if isinstance(c, Choice)
            ]
        result = self.generator.assemble(resolved, choices)
        record.answer_computed(resolved.route.kind, result)
        self._observe(resolved, result, time.monotonic() - began)
        return result

    async def _compute_and_store(
        self, resolved: ResolvedRequest, policy: CachePolicy
    ) -> GenerationResult:
        result = await self._compute(resolved)
        await self.cache.store_result(policy, result)
        return result

    async def _stream_computed(
        self, resolved: ResolvedRequest, policy: CachePolicy | None
    ) -> AsyncIterator[StreamEvent]:
        kind = resolved.route.kind
        # A cacheable stream leads its single flight: identical requests arriving meanwhile wait.
        leading = self._flight.lead(policy.key) if policy is not None else nullcontext()
        began = time.monotonic()
        with record.in_flight(kind), self._computing(resolved), leading as future:
            choices: list[Choice] = []
            async for event in self.generator.choices(resolved, stream=True):
                if isinstance(event, Choice):
                    choices.append(event)
                yield event
            result = self.generator.assemble(resolved, choices)
            record.answer_computed(kind, result)
            self._observe(resolved, result, time.monotonic() - began)
            if policy is not None and future is not None:
                result = replace(result, cache="miss")
                await self.cache.store_result(policy, result)
                future.set_result(result)
        yield result


async def _timed(
    events: AsyncIterator[StreamEvent], kind: str, began: float
) -> AsyncIterator[StreamEvent]:
    """The events, recording when the first answer token goes out."""
    waiting = True
    async for event in events:
        if waiting and isinstance(event, ChoiceDelta) and event.token_ids:
            waiting = False
            record.first_token(kind, time.monotonic() - began)
        yield event
