"""Step 3 of a request: generate its choices on the engine, as events.

Each choice is an async stream of ``ChoiceDelta`` increments ending with the whole ``Choice``; all
choices of all prompts run concurrently, so the engine batches them. A plain or distilled choice is
one engine sequence; a power choice is one independent run of a power sampler (an MH chain or an SMC
particle system, service.power), whichever the request resolved to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from service.engines.base import Engine, Generated, derive_seed
from service.generation import Choice, ChoiceDelta, GenerationResult
from service.pipeline.resolve import ResolvedRequest
from service.power import FinalTokens, PowerConfig, PowerReport, PowerSample, sampler_for
from service.prompts import PromptRenderer, StopStrings, TextStream
from service.streams import merge

__all__ = ["ChoiceGenerator"]


class ChoiceGenerator:
    def __init__(self, engine: Engine, renderer: PromptRenderer):
        self.engine = engine
        self.renderer = renderer

    def choices(self, resolved: ResolvedRequest, *, stream: bool) -> AsyncIterator[ChoiceDelta | Choice]:
        """Every choice of every prompt, concurrently; choice i of prompt p is numbered p * n + i."""
        n = resolved.n
        return merge(
            [
                self._choice(resolved, prompt, p * n + i, stream=stream)
                for p, prompt in enumerate(resolved.prompts)
                for i in range(n)
            ]
        )

    def assemble(self, resolved: ResolvedRequest, choices: list[Choice]) -> GenerationResult:
        choices = sorted(choices, key=lambda c: c.index)
        result = GenerationResult(
            model=resolved.route.model_id,
            prompt_tokens=sum(len(prompt) for prompt in resolved.prompts),
            choices=choices,
        )
        if resolved.power is not None:
            runs = [c.sampler for c in choices if c.sampler is not None]
            result.power = PowerReport.summarise(
                resolved.power, runs, result.completion_tokens, resolved.power_choice
            )
        return result

    def _choice(
        self, resolved: ResolvedRequest, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        if resolved.power is not None:
            return self._power_choice(resolved, resolved.power, prompt, index, stream=stream)
        return self._plain_choice(resolved, prompt, index, stream=stream)

    async def _plain_choice(
        self, resolved: ResolvedRequest, prompt: tuple[int, ...], index: int, *, stream: bool
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        options = resolved.sampling
        assert options is not None
        if resolved.seed is not None:
            options = replace(options, seed=derive_seed(resolved.seed, index))
        want_top = resolved.logprobs is not None
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
        if resolved.rescore and whole.token_ids:
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
        self,
        resolved: ResolvedRequest,
        config: PowerConfig,
        prompt: tuple[int, ...],
        index: int,
        *,
        stream: bool,
    ) -> AsyncIterator[ChoiceDelta | Choice]:
        want_top = resolved.logprobs is not None
        stops = StopStrings(self.renderer, resolved.stop)
        # Final tokens may end in the start of a stop string that a later token completes: hold back
        # that much text until the answer is known.
        hold = max((len(s) for s in resolved.stop), default=1) - 1
        decoder = TextStream(self.renderer)
        final_text, sent_text, sent_tokens = "", 0, 0
        sample: PowerSample | None = None
        sampler = sampler_for(config, self.engine)
        stop_at = stops.keep if resolved.stop else None
        async for event in sampler.run(prompt, config, run_id=index, stop_at=stop_at):
            if isinstance(event, PowerSample):
                sample = event
            elif isinstance(event, FinalTokens) and stream:
                final_text += decoder.push(event.token_ids)
                safe = max(sent_text, len(final_text) - hold)
                sent_tokens += len(event.token_ids)
                yield ChoiceDelta(
                    index=index,
                    text=final_text[sent_text:safe],
                    token_ids=event.token_ids,
                    logprobs=event.logprobs,
                    top_logprobs=event.top_logprobs if want_top else None,
                )
                sent_text = safe
        assert sample is not None

        cut = stops.cut(sample.token_ids)
        answer = self.renderer.decode(sample.token_ids) if cut is None else cut[1]
        top = sample.top_logprobs if want_top else None
        if stream:
            yield ChoiceDelta(
                index=index,
                text=answer[sent_text:],
                token_ids=sample.token_ids[sent_tokens:],
                logprobs=sample.logprobs[sent_tokens:],
                top_logprobs=top[sent_tokens:] if top is not None else None,
            )
        yield Choice(
            index=index,
            text=answer,
            token_ids=sample.token_ids,
            logprobs=sample.logprobs,
            top_logprobs=top,
            finish_reason=sample.finish_reason,
            sampler=sample.stats,
        )
