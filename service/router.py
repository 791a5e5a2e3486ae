"""Routes: which way a request is served, and serving it that way.

A served model ``<name>`` has up to three routes, chosen by the model id a client asks for:

    <name>            plain sampling from the base model
    <name>-power      power sampling: answers from p(y | x) ** alpha (service.power)
    <name>-distilled  the power-self-distilled model: a LoRA adapter, sampled plainly

``choose_route`` is the pure choice; ``Router`` checks a request against its route (defaults,
context, budget: all before any work starts) and runs it on the engine.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from service.config import Settings
from service.engines.base import Engine, Generated, SamplingOptions, derive_seed
from service.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    TokenBudgetError,
)
from service.generation import Choice, ChoiceDelta, GenerationRequest, GenerationResult
from service.power import FrozenTokens, PowerConfig, PowerSample, PowerSampler
from service.prompts import PromptRenderer, TextStream
from service.streams import merge

__all__ = ["Route", "RouteKind", "Router", "build_routes", "choose_route"]

DISTILLED_ADAPTER = "distilled"


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
class _Plan:
    """A request checked against its route, with every default resolved."""

    route: Route
    request: GenerationRequest
    max_tokens: int
    options: SamplingOptions | None = None  # plain and distilled
    power: PowerConfig | None = None  # power


class Router:
    def __init__(self, engine: Engine, renderer: PromptRenderer, settings: Settings):
        self.engine = engine
        self.renderer = renderer
        self.settings = settings
        self.sampler = PowerSampler(engine)
        self.routes = build_routes(
            engine.info.model_id, distilled=DISTILLED_ADAPTER in engine.info.adapters
        )

    def choose(self, model: str) -> Route:
        return choose_route(model, self.routes)

    # --- serving -------------------------------------------------------------------------------

    async def generate(self, route: Route, request: GenerationRequest) -> GenerationResult:
        plan = self.plan(route, request)  # raises before any work starts
        choices = [item async for item in self._run(plan, stream=False) if isinstance(item, Choice)]
        return self._result(plan, choices)

    def stream(
        self, route: Route, request: GenerationRequest
    ) -> AsyncIterator[ChoiceDelta | Choice | GenerationResult]:
        """Deltas of every choice as they come, each whole ``Choice`` as it ends, and the whole
        result last (for usage and reports). The request is checked now, before streaming."""
        plan = self.plan(route, request)
        return self._stream(plan)

    async def _stream(self, plan: _Plan) -> AsyncIterator[ChoiceDelta | Choice | GenerationResult]:
        choices: list[Choice] = []
        async for item in self._run(plan, stream=True):
            if isinstance(item, Choice):
                choices.append(item)
            yield item
        yield self._result(plan, choices)

    def _run(self, plan: _Plan, *, stream: bool) -> AsyncIterator[ChoiceDelta | Choice]:
        """All choices of all prompts, concurrently: the engine batches them."""
        n = plan.request.n
        return merge(
            [
                self._run_choice(plan, prompt, p * n + j, stream=stream)
                for p, prompt in enumerate(plan.request.prompts)
                for j in range(n)
            ]
        )

    def _result(self, plan: _Plan, choices: list[Choice]) -> GenerationResult:
        choices.sort(key=lambda c: c.index)
        prompt_tokens = sum(len(prompt) for prompt in plan.request.prompts)
        result = GenerationResult(
            model=plan.route.model_id, prompt_tokens=prompt_tokens, choices=choices
        )
        if plan.power is not None:
            result.report = _power_report(plan.power, choices) | {"self_reward": result.self_reward}
        return result

    def _run_choice(
        self, plan: _Plan, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        if plan.power is not None:
            return self._power_choice(plan, prompt, index, stream=stream)
        return self._plain_choice(plan, prompt, index, stream=stream)

    async def _plain_choice(
        self, plan: _Plan, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        assert plan.options is not None
        options = plan.options
        if plan.request.seed is not None:
            options = replace(options, seed=derive_seed(plan.request.seed, index))
        whole = Generated()
        async for part in self.engine.generate(prompt, options, stream=stream):
            whole.extend(part)
            if stream and (part.token_ids or part.finish_reason):
                yield ChoiceDelta(
                    index=index,
                    text=part.text,
                    token_ids=part.token_ids,
                    logprobs=part.logprobs,
                    top_logprobs=part.top_logprobs if plan.request.logprobs is not None else None,
                )
        base_logprobs = None
        if plan.route.kind is RouteKind.DISTILLED and whole.token_ids:
            # Self-reward is measured under the base model, so the routes can be compared.
            base_logprobs = await self.engine.score([*prompt, *whole.token_ids], len(prompt))
        yield Choice(
            index=index,
            text=whole.text,
            token_ids=whole.token_ids,
            logprobs=whole.logprobs,
            base_logprobs=base_logprobs,
            top_logprobs=whole.top_logprobs if plan.request.logprobs is not None else None,
            finish_reason=whole.finish_reason or "stop",
        )

    async def _power_choice(
        self, plan: _Plan, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        assert plan.power is not None
        request = plan.request
        text = TextStream(self.renderer)
        sent = 0  # tokens already streamed (frozen early, with a stream lag)
        sample: PowerSample | None = None
        async for event in self.sampler.run(prompt, plan.power, chain=index):
            if isinstance(event, FrozenTokens):
                sent += len(event.token_ids)
                if stream and not request.stop:  # with stop strings, nothing is sure until the end
                    yield ChoiceDelta(
                        index=index,
                        text=text.push(event.token_ids),
                        token_ids=event.token_ids,
                        logprobs=event.logprobs,
                        top_logprobs=event.top_logprobs if request.logprobs is not None else None,
                    )
            else:
                sample = event
        assert sample is not None

        token_ids, finish_reason = sample.token_ids, sample.finish_reason
        answer_text = self.renderer.decode(token_ids)
        if request.stop:
            cut = _truncate_at_stop(self.renderer, token_ids, answer_text, request.stop)
            if cut is not None:
                keep, answer_text = cut
                token_ids, finish_reason = token_ids[:keep], "stop"
            sent = 0
            text = TextStream(self.renderer)
        logprobs = sample.logprobs[: len(token_ids)]
        top = sample.top_logprobs[: len(token_ids)] if request.logprobs is not None else None
        if stream:
            rest = token_ids[sent:]
            yield ChoiceDelta(
                index=index,
                text=text.push(rest, final=True) if not request.stop else answer_text,
                token_ids=rest,
                logprobs=logprobs[sent:],
                top_logprobs=top[sent:] if top is not None else None,
            )
        stats = sample.stats
        yield Choice(
            index=index,
            text=answer_text,
            token_ids=token_ids,
            logprobs=logprobs,
            top_logprobs=top,
            finish_reason=finish_reason,
            report={
                "proposals": stats.proposals,
                "accepted": stats.accepted,
                "tokens_generated": stats.tokens_generated,
                "normaliser_error_bound": stats.normaliser_error_bound,
            },
        )

    # --- checking a request against its route ---------------------------------------------------

    def plan(self, route: Route, request: GenerationRequest) -> _Plan:
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
        max_tokens = self._max_tokens(request, self.settings.default_max_tokens)
        options = SamplingOptions(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=request.top_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            stop=request.stop,
            top_logprobs=request.logprobs or 0,
            adapter=DISTILLED_ADAPTER if route.kind is RouteKind.DISTILLED else None,
        )
        return _Plan(route, request, max_tokens, options=options)

    def _plan_power(self, route: Route, request: GenerationRequest) -> _Plan:
        if request.top_p != 1.0:
            raise InvalidRequestError(
                "The power route samples without top-p (its proposal is the full tempered model); "
                "leave top_p at 1.",
                param="top_p",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(request, name):
                raise InvalidRequestError(
                    f"`{name}` is not supported on the power route: it would change the target "
                    "distribution.",
                    param=name,
                )
        alpha = _alpha(request, default=self.settings.power_alpha)
        max_tokens = self._max_tokens(request, self.settings.power_max_tokens)
        try:
            config = PowerConfig(
                max_tokens=max_tokens,
                alpha=alpha,
                mcmc_steps=(
                    self.settings.power_mcmc_steps if request.mcmc_steps is None else request.mcmc_steps
                ),
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
                f"mcmc_steps={config.mcmc_steps}, "
                f"block_size={config.block_tokens}), over the limit of "
                f"{self.settings.power_token_budget}. Lower max_tokens, n or mcmc_steps, or raise "
                "block_size.",
                param="max_tokens",
            )
        return _Plan(route, request, max_tokens, power=config)

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
        if not request.power_alpha >= 1:
            raise InvalidRequestError("power_alpha must be >= 1.", param="power_alpha")
        return request.power_alpha
    if request.temperature is None:
        return default
    if request.temperature > 1:
        raise InvalidRequestError(
            "On the power route temperature is 1/alpha and must be in [0, 1] (alpha >= 1).",
            param="temperature",
        )
    return math.inf if request.temperature == 0 else 1.0 / request.temperature


def _truncate_at_stop(
    renderer: PromptRenderer, token_ids: list[int], text: str, stop: Sequence[str]
) -> tuple[int, str] | None:
    """Cut an answer at its first stop string: (tokens kept, text before the stop), or None."""
    hits = [(i, s) for s in stop if (i := text.find(s)) >= 0]
    if not hits:
        return None
    start, word = min(hits)
    end = start + len(word)
    # Fewest tokens whose text reaches the end of the stop string (decoded length grows with j).
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(renderer.decode(token_ids[:mid])) >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo, text[:start]


def _power_report(config: PowerConfig, choices: list[Choice]) -> dict[str, Any]:
    """The power route's report over all choices: what the chains cost and what they got."""
    reports = [c.report or {} for c in choices]
    proposals = sum(r.get("proposals", 0) for r in reports)
    accepted = sum(r.get("accepted", 0) for r in reports)
    generated = sum(r.get("tokens_generated", 0) for r in reports)
    returned = sum(len(c.token_ids) for c in choices)
    return {
        "alpha": config.alpha if math.isfinite(config.alpha) else "inf",
        "mcmc_steps": config.mcmc_steps,
        "block_size": config.block_tokens,
        "stream_lag": config.stream_lag,
        "proposals": proposals,
        "accepted": accepted,
        "acceptance_rate": accepted / proposals if proposals else None,
        "tokens_generated": generated,
        "cost_multiplier": generated / returned if returned else None,
        "normaliser_error_bound": max(
            (r.get("normaliser_error_bound", 0.0) for r in reports), default=0.0
        ),
    }
