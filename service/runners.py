"""Running a checked request on the engine: the choices of every route, as events.

Each choice is an async stream of ``ChoiceDelta`` increments ending with the whole ``Choice``; all
choices of all prompts run concurrently, so the engine batches them. Plain and distilled choices are
one engine sequence each; a power choice is one MCMC chain (service.power).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from service.engines.base import Engine, Generated, SamplingOptions, derive_seed
from service.generation import Choice, ChoiceDelta, GenerationRequest, GenerationResult
from service.power import FrozenTokens, PowerConfig, PowerSample, PowerSampler
from service.prompts import PromptRenderer, TextStream
from service.streams import merge

__all__ = ["Plan", "Runner"]


@dataclass(frozen=True)
class Plan:
    """A request checked against its route, with every default resolved."""

    model_id: str
    request: GenerationRequest
    options: SamplingOptions | None = None  # plain and distilled
    power: PowerConfig | None = None  # power
    # Score answers under the base model (when an adapter samples them), for the self-reward.
    rescore: bool = False


class Runner:
    def __init__(self, engine: Engine, renderer: PromptRenderer):
        self.engine = engine
        self.renderer = renderer
        self.sampler = PowerSampler(engine)

    def run(self, plan: Plan, *, stream: bool) -> AsyncIterator[ChoiceDelta | Choice]:
        """Every choice of every prompt, concurrently; choice i of prompt p is numbered p * n + i."""
        n = plan.request.n
        return merge(
            [
                self._choice(plan, prompt, p * n + i, stream=stream)
                for p, prompt in enumerate(plan.request.prompts)
                for i in range(n)
            ]
        )

    def result(self, plan: Plan, choices: list[Choice]) -> GenerationResult:
        choices = sorted(choices, key=lambda c: c.index)
        result = GenerationResult(
            model=plan.model_id,
            prompt_tokens=sum(len(prompt) for prompt in plan.request.prompts),
            choices=choices,
        )
        if plan.power is not None:
            result.report = power_report(plan.power, choices) | {"self_reward": result.self_reward}
        return result

    def _choice(
        self, plan: Plan, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        if plan.power is not None:
            return self._power_choice(plan, plan.power, prompt, index, stream=stream)
        return self._plain_choice(plan, prompt, index, stream=stream)

    async def _plain_choice(
        self, plan: Plan, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        assert plan.options is not None
        request, options = plan.request, plan.options
        if request.seed is not None:
            options = replace(options, seed=derive_seed(request.seed, index))
        want_top = request.logprobs is not None
        whole = Generated()
        async for part in self.engine.generate(prompt, options, stream=stream):
            whole.extend(part)
            if stream and part.token_ids:
                yield ChoiceDelta(
                    index=index,
                    text=part.text,
                    token_ids=part.token_ids,
                    logprobs=part.logprobs,
                    top_logprobs=part.top_logprobs if want_top else None,
                )
        base_logprobs = None
        if plan.rescore and whole.token_ids:
            base_logprobs = await self.engine.score([*prompt, *whole.token_ids], len(prompt))
        yield Choice(
            index=index,
            text=whole.text,
            token_ids=whole.token_ids,
            logprobs=whole.logprobs,
            base_logprobs=base_logprobs,
            top_logprobs=whole.top_logprobs if want_top else None,
            finish_reason=whole.finish_reason or "stop",
        )

    async def _power_choice(
        self, plan: Plan, config: PowerConfig, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        request = plan.request
        want_top = request.logprobs is not None
        # With stop strings nothing is sure until the end (a later block may hold the stop).
        stream_early = stream and not request.stop
        text = TextStream(self.renderer)
        sent = 0  # tokens streamed early (frozen blocks, with a stream lag)
        sample: PowerSample | None = None
        async for event in self.sampler.run(prompt, config, chain=index):
            if isinstance(event, PowerSample):
                sample = event
            elif isinstance(event, FrozenTokens) and stream_early:
                sent += len(event.token_ids)
                yield ChoiceDelta(
                    index=index,
                    text=text.push(event.token_ids),
                    token_ids=event.token_ids,
                    logprobs=event.logprobs,
                    top_logprobs=event.top_logprobs if want_top else None,
                )
        assert sample is not None

        token_ids, finish_reason = sample.token_ids, sample.finish_reason
        answer = self.renderer.decode(token_ids)
        cut = truncate_at_stop(self.renderer, token_ids, answer, request.stop)
        if cut is not None:
            kept, answer = cut
            token_ids, finish_reason = token_ids[:kept], "stop"
        logprobs = sample.logprobs[: len(token_ids)]
        top = sample.top_logprobs[: len(token_ids)] if want_top else None
        if stream:
            yield ChoiceDelta(
                index=index,
                text=text.push(token_ids[sent:], final=True) if stream_early else answer,
                token_ids=token_ids[sent:],
                logprobs=logprobs[sent:],
                top_logprobs=top[sent:] if top is not None else None,
            )
        stats = sample.stats
        yield Choice(
            index=index,
            text=answer,
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


def truncate_at_stop(
    renderer: PromptRenderer, token_ids: list[int], text: str, stop: Sequence[str]
) -> tuple[int, str] | None:
    """Cut an answer at its first stop string: (tokens kept, text before the stop), or None."""
    hits = [(i, s) for s in stop if (i := text.find(s)) >= 0]
    if not hits:
        return None
    start, word = min(hits)
    end = start + len(word)
    # Fewest tokens whose text reaches the end of the stop string (decoded length grows with them).
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(renderer.decode(token_ids[:mid])) >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo, text[:start]


def power_report(config: PowerConfig, choices: list[Choice]) -> dict[str, Any]:
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
