"""Routes: which way a request is served, and serving it that way, cached where that is sound.

A served model ``<name>`` has up to three routes, chosen by the model id a client asks for:

    <name>            plain sampling from the base model
    <name>-power      power sampling: answers from p(y | x) ** alpha (service.power)
    <name>-distilled  the power-self-distilled model: a LoRA adapter, sampled plainly

``choose_route`` is the pure choice. ``Router`` checks a request against its route (defaults, context,
token budget: all before any work starts), answers it from the response cache when it may, runs it
(service.runners) otherwise, and records what it cost (service.metrics).

Sampling is random, so by default only reproducible requests use the cache: those with a ``seed``, and
greedy ones (temperature 0) off the power route, whose temperature-0 search still draws proposals.
A request's ``cache`` object opts in or out. Identical concurrent requests are computed once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from enum import StrEnum

from service.cache import ResponseStore, SingleFlight, cache_key
from service.config import Settings
from service.engines.base import DISTILLED_ADAPTER, Engine, SamplingOptions
from service.errors import ContextLengthError, InvalidRequestError, ModelNotFoundError, TokenBudgetError
from service.generation import Choice, ChoiceDelta, GenerationRequest, GenerationResult
from service.metrics import (
    ANSWER_NLL,
    CACHE_LOOKUPS,
    POWER_ACCEPTANCE_RATE,
    POWER_COST_MULTIPLIER,
    TOKENS,
)
from service.power import PowerConfig
from service.prompts import PromptRenderer
from service.runners import Plan, Runner

__all__ = ["DISTILLED_ADAPTER", "Route", "RouteKind", "Router", "Stream", "build_routes", "choose_route"]


Event = ChoiceDelta | Choice | GenerationResult


class RouteKind(StrEnum):
    PLAIN = "plain"
    POWER = "power"
    DISTILLED = "distilled"


_SUFFIXES = {RouteKind.PLAIN: "", RouteKind.POWER: "-power", RouteKind.DISTILLED: "-distilled"}
# PowerConfig fields -> the request parameters that set them.
_POWER_PARAMS = {"alpha": "power_alpha", "stream_lag": "power_stream_lag"}


@dataclass(frozen=True)
class Route:
    model_id: str  # what clients put in `model`
    kind: RouteKind
    base_model: str


def build_routes(base_model: str, *, distilled: bool) -> tuple[Route, ...]:
    """The routes of one base model; the distilled one only when an adapter is configured."""
    kinds = [RouteKind.PLAIN, RouteKind.POWER] + ([RouteKind.DISTILLED] if distilled else [])
    return tuple(Route(base_model + _SUFFIXES[kind], kind, base_model) for kind in kinds)


def choose_route(model: str, routes: Sequence[Route]) -> Route:
    for route in routes:
        if route.model_id == model:
            return route
    raise ModelNotFoundError(model)


@dataclass(frozen=True)
class _CachePolicy:
    key: str
    read: bool
    write: bool
    ttl: float
    max_age: float | None


@dataclass
class Stream:
    """A streamed answer: its cache status (known before the first byte) and its events: deltas,
    each whole choice as it ends, and the result last."""

    cache: str
    events: AsyncIterator[Event]


class Router:
    def __init__(
        self,
        engine: Engine,
        renderer: PromptRenderer,
        settings: Settings,
        *,
        store: ResponseStore,
        revision: str,
    ):
        self.engine = engine
        self.renderer = renderer
        self.settings = settings
        self.store = store
        self.revision = revision  # of the weights and adapters: part of every cache key
        self.runner = Runner(engine, renderer)
        self.routes = build_routes(
            engine.info.model_id, distilled=DISTILLED_ADAPTER in engine.info.adapters
        )
        self._flight: SingleFlight[GenerationResult] = SingleFlight()

    def choose(self, model: str) -> Route:
        return choose_route(model, self.routes)

    # --- serving -------------------------------------------------------------------------------

    async def generate(self, route: Route, request: GenerationRequest) -> GenerationResult:
        plan = self.plan(route, request)  # raises before any work starts
        policy = self._cache_policy(route, request)
        if policy is None:
            CACHE_LOOKUPS.labels(route.kind, "bypass").inc()
            return await self._compute(route, plan)
        if (cached := await self._lookup(route, policy)) is not None:
            return cached
        result, shared = await self._flight.run(
            policy.key, lambda: self._compute_and_store(route, plan, policy)
        )
        CACHE_LOOKUPS.labels(route.kind, "hit" if shared else "miss").inc()
        return replace(result, cache="hit" if shared else "miss")

    async def stream(self, route: Route, request: GenerationRequest) -> Stream:
        """Check the request and open its stream; a bad request raises here, before any byte."""
        plan = self.plan(route, request)
        policy = self._cache_policy(route, request)
        if policy is None:
            CACHE_LOOKUPS.labels(route.kind, "bypass").inc()
            return Stream("bypass", self._stream_computed(route, plan, None))
        if (cached := await self._lookup(route, policy)) is not None:
            return Stream("hit", _replay(cached))
        status = "hit" if self._flight.running(policy.key) else "miss"
        return Stream(status, self._stream_computed(route, plan, policy))

    async def _compute(self, route: Route, plan: Plan) -> GenerationResult:
        choices = [c async for c in self.runner.run(plan, stream=False) if isinstance(c, Choice)]
        result = self.runner.result(plan, choices)
        _record(route, result)
        return result

    async def _compute_and_store(
        self, route: Route, plan: Plan, policy: _CachePolicy
    ) -> GenerationResult:
        result = await self._compute(route, plan)
        await self._store(policy, result)
        return result

    async def _stream_computed(
        self, route: Route, plan: Plan, policy: _CachePolicy | None
    ) -> AsyncIterator[Event]:
        if policy is not None:
            # A cacheable stream joins its single flight: if an identical request is being computed,
            # it replays that result; otherwise it leads, and identical requests arriving meanwhile wait.
            shared = await self._flight.wait(policy.key)
            if shared is not None:
                CACHE_LOOKUPS.labels(route.kind, "hit").inc()
                async for event in _replay(replace(shared, cache="hit")):
                    yield event
                return
            CACHE_LOOKUPS.labels(route.kind, "miss").inc()
        with self._flight.lead(policy.key) if policy is not None else nullcontext() as future:
            choices: list[Choice] = []
            async for event in self.runner.run(plan, stream=True):
                if isinstance(event, Choice):
                    choices.append(event)
                yield event
            result = self.runner.result(plan, choices)
            _record(route, result)
            if policy is not None and future is not None:
                result = replace(result, cache="miss")
                await self._store(policy, result)
                future.set_result(result)
        yield result

    async def _store(self, policy: _CachePolicy, result: GenerationResult) -> None:
        if policy.write:
            await self.store.set(policy.key, json.dumps(result.to_json()).encode(), policy.ttl)

    # --- cache -----------------------------------------------------------------------------------

    def _cache_policy(self, route: Route, request: GenerationRequest) -> _CachePolicy | None:
        control = request.cache
        greedy = request.temperature == 0 and route.kind is not RouteKind.POWER
        if not (request.seed is not None or greedy or control.explicit):
            return None
        if control.no_cache and control.no_store:
            return None
        return _CachePolicy(
            key=cache_key(route=route.model_id, revision=self.revision, fields=request.output_fields()),
            read=not control.no_cache,
            write=not control.no_store,
            ttl=control.ttl if control.ttl is not None else self.settings.cache_ttl_s,
            max_age=control.s_maxage,
        )

    async def _lookup(self, route: Route, policy: _CachePolicy) -> GenerationResult | None:
        if not policy.read:
            return None
        found = await self.store.get(policy.key)
        if found is None:
            return None
        value, stored_at = found
        if policy.max_age is not None and time.time() - stored_at > policy.max_age:
            return None
        CACHE_LOOKUPS.labels(route.kind, "hit").inc()
        return replace(GenerationResult.from_json(json.loads(value)), cache="hit")

    # --- checking a request against its route ---------------------------------------------------

    def plan(self, route: Route, request: GenerationRequest) -> Plan:
        """Resolve defaults and refuse what cannot be served, before any engine work starts."""
        if request.n > self.settings.max_n:
            raise InvalidRequestError(f"n must be <= {self.settings.max_n}.", param="n")
        for prompt in request.prompts:
            self.renderer.validate_ids(prompt, param=request.prompt_param)
        if route.kind is RouteKind.POWER:
            return self._plan_power(route, request)
        for name in ("power_alpha", "mcmc_steps", "block_size", "power_stream_lag"):
            if getattr(request, name) is not None:
                raise InvalidRequestError(
                    f"`{name}` applies to the power route only (model `{route.base_model}-power`).",
                    param=name,
                )
        options = SamplingOptions(
            max_tokens=self._max_tokens(request, self.settings.default_max_tokens),
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=request.top_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            stop=request.stop,
            top_logprobs=request.logprobs or 0,
            adapter=DISTILLED_ADAPTER if route.kind is RouteKind.DISTILLED else None,
        )
        # The distilled model's answers are scored under the base model, so self-rewards compare.
        return Plan(route.model_id, request, options=options, rescore=route.kind is RouteKind.DISTILLED)

    def _plan_power(self, route: Route, request: GenerationRequest) -> Plan:
        if request.top_p != 1.0:
            raise InvalidRequestError(
                "The power route samples without top-p (its proposal is the full tempered model); "
                "leave top_p at 1.",
                param="top_p",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(request, name):
                raise InvalidRequestError(
                    f"`{name}` is not supported on the power route: it would change its target.",
                    param=name,
                )
        max_tokens = self._max_tokens(request, self.settings.power_max_tokens)
        try:
            config = PowerConfig(
                max_tokens=max_tokens,
                alpha=_alpha(request, default=self.settings.power_alpha),
                mcmc_steps=self.settings.power_mcmc_steps
                if request.mcmc_steps is None
                else request.mcmc_steps,
                block_size=request.block_size,
                top_logprobs=self.settings.power_top_logprobs,
                stream_lag=request.power_stream_lag,
                seed=request.seed,
            )
        except ValueError as exc:  # PowerConfig names the field first
            field = str(exc).split()[0]
            raise InvalidRequestError(str(exc), param=_POWER_PARAMS.get(field, field)) from exc
        worst_case = config.worst_case_tokens() * request.n * len(request.prompts)
        if worst_case > self.settings.power_token_budget:
            raise TokenBudgetError(
                f"This request could make the engine generate up to {worst_case} tokens "
                f"({len(request.prompts)} prompt(s), n={request.n}, max_tokens={max_tokens}, "
                f"mcmc_steps={config.mcmc_steps}, block_size={config.block_tokens}), over the limit of "
                f"{self.settings.power_token_budget}. Lower max_tokens, n or mcmc_steps, or raise "
                "block_size.",
                param="max_tokens",
            )
        return Plan(route.model_id, request, power=config)

    def _max_tokens(self, request: GenerationRequest, default: int) -> int:
        """max_tokens as asked, or the route's default capped by the room the prompts leave."""
        context = self.engine.info.max_model_len
        prompt_len = max(len(prompt) for prompt in request.prompts)
        if prompt_len >= context:
            raise ContextLengthError(
                f"This model's maximum context length is {context} tokens; the prompt has {prompt_len}.",
                param=request.prompt_param,
            )
        if request.max_tokens is None:
            return min(default, context - prompt_len)
        if prompt_len + request.max_tokens > context:
            raise ContextLengthError(
                f"This model's maximum context length is {context} tokens; the prompt has "
                f"{prompt_len} and max_tokens asks for {request.max_tokens} more.",
                param="max_tokens",
            )
        return request.max_tokens


def _alpha(request: GenerationRequest, *, default: float) -> float:
    """The power route's exponent: power_alpha if given, else 1/temperature (0 -> inf)."""
    if request.power_alpha is not None:
        return request.power_alpha
    if request.temperature is None:
        return default
    if request.temperature > 1:
        raise InvalidRequestError(
            "On the power route temperature is 1/alpha and must be in [0, 1] (alpha >= 1).",
            param="temperature",
        )
    return math.inf if request.temperature == 0 else 1.0 / request.temperature


async def _replay(result: GenerationResult) -> AsyncIterator[Event]:
    """A cached result as a stream: each choice whole, then the result."""
    for choice in result.choices:
        yield ChoiceDelta(
            index=choice.index,
            text=choice.text,
            token_ids=choice.token_ids,
            logprobs=choice.logprobs,
            top_logprobs=choice.top_logprobs,
        )
        yield choice
    yield result


def _record(route: Route, result: GenerationResult) -> None:
    """What a computed (not cached) result cost and what it got."""
    returned = result.completion_tokens
    generated = (result.report or {}).get("tokens_generated", returned)
    TOKENS.labels(route.kind, "prompt").inc(result.prompt_tokens)
    TOKENS.labels(route.kind, "returned").inc(returned)
    TOKENS.labels(route.kind, "generated").inc(generated)
    for choice in result.choices:
        if choice.token_ids:
            ANSWER_NLL.labels(route.kind).observe(-choice.self_reward["mean_logprob"])
    if route.kind is RouteKind.POWER and result.report is not None:
        if result.report["cost_multiplier"] is not None:
            POWER_COST_MULTIPLIER.observe(result.report["cost_multiplier"])
        if result.report["acceptance_rate"] is not None:
            POWER_ACCEPTANCE_RATE.observe(result.report["acceptance_rate"])
