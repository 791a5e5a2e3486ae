"""How the two completion endpoints' responses look: a choice, a streamed delta, a log-prob listing.

Everything else about a completion response (ids, usage, the ``self_reward`` and ``power``
extensions, the finish and usage chunks) is the same for both: service/serving/completions.py.
"""

from __future__ import annotations

import abc
from typing import Any

from service.generation import Choice, ChoiceDelta
from service.prompts import PromptRenderer
from service.serving.tools import ToolCalling, ToolCallStream

__all__ = ["ChatFormat", "CompletionFormat", "ResponseFormat"]


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
    def delta(self, delta: ChoiceDelta, *, first: bool) -> dict[str, Any] | None:
        """A streamed increment of a choice; ``first`` for the choice's first chunk. None when there
        is nothing to send yet (text held back until a tool call is parsed)."""

    @abc.abstractmethod
    def finish(self, choice: Choice) -> dict[str, Any]:
        """The chunk entry that ends a streamed choice."""

    def alternatives(self, top: dict[int, float]) -> list[tuple[int, float]]:
        """The k most likely tokens of a position, best first."""
        ranked = sorted(top.items(), key=lambda item: item[1], reverse=True)
        return ranked[: self.top_logprobs or 0]


class ChatFormat(ResponseFormat):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(
        self, renderer: PromptRenderer, top_logprobs: int | None, tools: ToolCalling | None = None
    ):
        super().__init__(renderer, top_logprobs)
        # With tools, answers may be tool calls: parsed whole, or per streamed choice.
        self.tools = tools
        self._streams: dict[int, ToolCallStream] = {}

    def choice(self, choice: Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": choice.text}
        finish_reason = choice.finish_reason
        if self.tools is not None:
            message, finish_reason = self.tools.message(choice.text, finish_reason)
        return {
            "index": choice.index,
            "message": message,
            "logprobs": self._logprobs(choice.token_ids, choice.logprobs, choice.top_logprobs),
            "finish_reason": finish_reason,
            "self_reward": choice.self_reward.to_json(),
        }

    def delta(self, delta: ChoiceDelta, *, first: bool) -> dict[str, Any] | None:
        message: dict[str, Any] = {"content": delta.text}
        if self.tools is not None:
            content, calls = self._stream(delta.index).push(delta.text)
            message = ({"content": content} if content else {}) | (
                {"tool_calls": calls} if calls else {}
            )
            if not message and not first and self.top_logprobs is None:
                return None
        if first:
            message = {"role": "assistant"} | message
        return {
            "index": delta.index,
            "delta": message,
            "logprobs": self._logprobs(delta.token_ids, delta.logprobs, delta.top_logprobs),
            "finish_reason": None,
        }

    def finish(self, choice: Choice) -> dict[str, Any]:
        message: dict[str, Any] = {}
        finish_reason = choice.finish_reason
        if self.tools is not None:
            stream = self._streams.pop(choice.index, None) or self.tools.stream()
            content, calls = stream.finish()
            message = ({"content": content} if content else {}) | (
                {"tool_calls": calls} if calls else {}
            )
            finish_reason = stream.finish_reason(finish_reason)
        return {
            "index": choice.index,
            "delta": message,
            "logprobs": None,
            "finish_reason": finish_reason,
        }

    def _stream(self, index: int) -> ToolCallStream:
        assert self.tools is not None
        return self._streams.setdefault(index, self.tools.stream())

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


class CompletionFormat(ResponseFormat):
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
