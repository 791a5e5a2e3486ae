"""Turning text and chat messages into token ids, and token ids back into text.

The gateway tokenises once, with the model directory's own tokenizer and chat template, and sends
token ids to every engine (local or remote), so that an MCMC chain never re-tokenises its prefix.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.errors import InvalidRequestError

__all__ = ["PromptRenderer", "TextStream"]

logger = logging.getLogger(__name__)


class PromptRenderer:
    def __init__(self, model_dir: Path):
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))

    def encode_text(self, text: str) -> list[int]:
        """A completion prompt, with the special tokens the tokenizer adds (as vLLM does)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Chat messages through the model's chat template, ready for the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError(
                "This model has no chat template; use /v1/completions.", param="messages"
            )
        # A conversation seen before (a cache hit, a retry) skips the template and the tokenizer.
        return list(self._encode_chat(json.dumps(list(messages), sort_keys=True)))

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one renderer per process, kept for its life
    def _encode_chat(self, messages_json: str) -> tuple[int, ...]:
        try:
            ids = self.tokenizer.apply_chat_template(
                json.loads(messages_json), add_generation_prompt=True, tokenize=True
            )
        except Exception as exc:  # template errors are the caller's messages, not a crash
            raise InvalidRequestError(f"The chat template failed: {exc}", param="messages") from exc
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return tuple(int(i) for i in ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def token_text(self, token_id: int) -> str:
        """One token as text, for log-prob listings."""
        return str(self.tokenizer.decode([token_id]))

    def validate_ids(self, token_ids: Sequence[int], *, param: str) -> None:
        size = len(self.tokenizer)
        bad = next((t for t in token_ids if not 0 <= t < size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"Token id {bad} is outside the vocabulary (0..{size - 1}).", param=param
            )


class TextStream:
    """Incremental decoding: text of tokens as they arrive, holding back split characters."""

    def __init__(self, renderer: PromptRenderer):
        self._renderer = renderer
        self._ids: list[int] = []
        self._sent = 0

    def push(self, token_ids: Sequence[int], *, final: bool = False) -> str:
        self._ids.extend(token_ids)
        text = self._renderer.decode(self._ids)
        if not final and text.endswith("\ufffd"):
            return ""  # a multi-byte character is split across tokens: wait for the rest
        new, self._sent = text[self._sent :], len(text)
        return new
