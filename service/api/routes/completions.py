"""POST /v1/completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import Services, ServicesDep
from service.api.protocol import CompletionRequest
from service.api.serving import Prepared, ResponseFormat, respond
from service.generation import Choice, ChoiceDelta

__all__ = ["prepare_completion", "router"]

router = APIRouter(prefix="/v1", tags=["completions"])


class _CompletionFormat(ResponseFormat):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl"

    def choice(self, choice: Choice) -> dict[str, Any]:
        return {
            "index": choice.index,
            "text": choice.text,
            "logprobs": self._logprobs(choice.token_ids, choice.logprobs, choice.top_logprobs),
            "finish_reason": choice.finish_reason,
            "self_reward": choice.self_reward.to_json(),
        }

    def delta(self, delta: ChoiceDelta, *, first: bool) -> dict[str, Any]:
        return {
            "index": delta.index,
            "text": delta.text,
            "logprobs": self._logprobs(delta.token_ids, delta.logprobs, delta.top_logprobs),
            "finish_reason": None,
        }

    def finish(self, choice: Choice) -> dict[str, Any]:
        return {
            "index": choice.index,
            "text": "",
            "logprobs": None,
            "finish_reason": choice.finish_reason,
        }

    def _logprobs(
        self, token_ids: list[int], logprobs: list[float], top: list[dict[int, float]] | None
    ) -> dict[str, Any] | None:
        """The legacy completions layout: parallel lists per token."""
        if self.top_logprobs is None:
            return None
        tokens = [self.renderer.token_text(t) for t in token_ids]
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": logprobs,
            "top_logprobs": [
                {self.renderer.token_text(t): lp for t, lp in self.alternatives(alts)}
                for alts in (top or [{} for _ in token_ids])
            ],
            "text_offset": offsets,
        }


def prepare_completion(body: CompletionRequest, services: Services) -> Prepared:
    """What /v1/completions makes of a body (also a batch line's)."""
    route = services.completions.route(body.model)
    prompts = []
    for prompt in body.prompts():
        if isinstance(prompt, str):
            prompts.append(services.renderer.encode_text(prompt))
        else:
            prompts.append(list(prompt))
    generation = body.to_generation(prompts)
    fmt = _CompletionFormat(services.renderer, generation.logprobs)
    return Prepared(route, generation, body.cache_control(), fmt, body.stream, body.include_usage)


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, services: ServicesDep
) -> Response:
    prepared = prepare_completion(body, services)
    return await respond(
        request,
        services,
        prepared.route,
        prepared.generation,
        prepared.control,
        prepared.fmt,
        stream=prepared.stream,
        include_usage=prepared.include_usage,
    )
