"""/tokenize and /detokenize, as ``vllm serve`` answers them: a prompt or a conversation as the
model's token ids (what a client counts against the context before sending), and ids back as text.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from service.errors import InvalidRequestError
from service.prompts import PromptRenderer
from service.serving.caller import Caller
from service.serving.models import ModelsServing
from service.serving.protocol import ChatMessage, ChatTool, CheckedRequest

__all__ = ["DetokenizeRequest", "TokenizeRequest", "TokenizeServing"]


class TokenizeRequest(CheckedRequest):
    """vLLM's: a ``prompt`` (completions) or ``messages`` (chat, with their ``tools``)."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    tools: Annotated[list[ChatTool], Field(max_length=128)] | None = None
    add_special_tokens: bool = True
    # The chat template always opens the assistant's turn here, as it does for a chat request.
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("Give either `prompt` or `messages`.", param="prompt")
        if not self.add_generation_prompt:
            raise InvalidRequestError(
                "`add_generation_prompt` false is not supported: chat prompts always open the "
                "assistant's turn.",
                param="add_generation_prompt",
            )
        return self


class DetokenizeRequest(CheckedRequest):
    model: str | None = None
    tokens: list[int]


class TokenizeServing:
    def __init__(self, renderer: PromptRenderer, models: ModelsServing):
        self.renderer = renderer
        self.models = models

    async def tokenize(self, body: TokenizeRequest, caller: Caller) -> dict[str, Any]:
        self._check_model(body.model, caller)
        if body.messages is not None:
            messages = [message.to_template() for message in body.messages]
            tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []] or None
            ids = await self.renderer.off_loop(lambda: self.renderer.encode_chat(messages, tools))
        else:
            prompt, special = body.prompt or "", body.add_special_tokens
            ids = await self.renderer.off_loop(
                lambda: self.renderer.encode_text(prompt, add_special_tokens=special)
            )
        strs = [self.renderer.token_text(i) for i in ids] if body.return_token_strs else None
        return {
            "count": len(ids),
            "max_model_len": self.models.engine.info.max_model_len,
            "tokens": ids,
            "token_strs": strs,
        }

    async def detokenize(self, body: DetokenizeRequest, caller: Caller) -> dict[str, str]:
        self._check_model(body.model, caller)
        self.renderer.validate_ids(body.tokens, param="tokens")
        tokens = body.tokens
        return {"prompt": await self.renderer.off_loop(lambda: self.renderer.decode(tokens))}

    def _check_model(self, model: str | None, caller: Caller) -> None:
        """A named model must be one this caller may call (all routes share one tokenizer)."""
        if model is not None:
            self.models.route(model, caller)
