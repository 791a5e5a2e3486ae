"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import Services, ServicesDep
from service.api.protocol import ChatCompletionRequest
from service.api.serving import Prepared, ResponseFormat, respond
from service.generation import Choice, ChoiceDelta

__all__ = ["prepare_chat", "router"]

router = APIRouter(prefix="/v1", tags=["chat"])


class _ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def choice(self, choice: Choice) -> dict[str, Any]:
        return {
            "index": choice.index,
            "message": {"role": "assistant", "content": choice.text},
            "logprobs": self._logprobs(choice.token_ids, choice.logprobs, choice.top_logprobs),
            "finish_reason": choice.finish_reason,
            "self_reward": choice.self_reward.to_json(),
        }

    def delta(self, delta: ChoiceDelta, *, first: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"content": delta.text}
        if first:
            message = {"role": "assistant"} | message
        return {
            "index": delta.index,
            "delta": message,
            "logprobs": self._logprobs(delta.token_ids, delta.logprobs, delta.top_logprobs),
            "finish_reason": None,
        }

    def finish(self, choice: Choice) -> dict[str, Any]:
        return {
            "index": choice.index,
            "delta": {},
            "logprobs": None,
            "finish_reason": choice.finish_reason,
        }

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.renderer.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    def _logprobs(
        self, token_ids: list[int], logprobs: list[float], top: list[dict[int, float]] | None
    ) -> dict[str, Any] | None:
        if self.top_logprobs is None:
            return None
        alternatives = top or [{} for _ in token_ids]
        return {
            "content": [
                self._entry(token, logprob)
                | {"top_logprobs": [self._entry(t, lp) for t, lp in self.alternatives(alts)]}
                for token, logprob, alts in zip(token_ids, logprobs, alternatives, strict=True)
            ]
        }


def prepare_chat(body: ChatCompletionRequest, services: Services) -> Prepared:
    """What /v1/chat/completions makes of a body (also a batch line's)."""
    route = services.completions.route(body.model)
    prompt = services.renderer.encode_chat([message.to_template() for message in body.messages])
    generation = body.to_generation(prompt)
    fmt = _ChatFormat(services.renderer, generation.logprobs)
    return Prepared(route, generation, body.cache_control(), fmt, body.stream, body.include_usage)


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, services: ServicesDep
) -> Response:
    prepared = prepare_chat(body, services)
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
