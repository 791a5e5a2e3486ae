"""Tool calls in a model's own syntax, found by vLLM's tool-call parser of that syntax.

A model asked to call tools freely (``tool_choice: auto``) writes its calls in the syntax its chat
template taught it (Hermes' ``<tool_call>{...}</tool_call>``, Llama's JSON, Mistral's ``[TOOL_CALLS]``,
...). vLLM ships a parser per syntax, chosen by name as ``vllm serve --tool-call-parser`` does; this
module is the one place the gateway reaches them (engines/ is the only layer that imports vLLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ParsedCalls", "ToolCallParser", "tool_call_parsers"]


@dataclass(frozen=True)
class ParsedCalls:
    """An answer split into its text and its tool calls: (function name, arguments as JSON text)."""

    content: str | None
    calls: list[tuple[str, str]]


def tool_call_parsers() -> list[str]:
    """The names of vLLM's tool-call parsers."""
    from vllm.tool_parsers import ToolParserManager

    return sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})


class ToolCallParser:
    def __init__(self, name: str, tokenizer: Any):
        from vllm.tool_parsers import ToolParserManager

        try:
            self._type = ToolParserManager.get_tool_parser(name)
        except KeyError:
            raise ValueError(
                f"No tool-call parser {name!r}; vLLM has {', '.join(tool_call_parsers())}."
            ) from None
        self.name = name
        self._tokenizer = tokenizer
        # Where a call starts in the text, when the syntax has a marker: text before it can be
        # streamed as it comes, everything after it waits for the parse.
        self.start_marker: str | None = getattr(self._type, "tool_call_start_token", None)

    def extract(self, text: str, tools: Sequence[dict[str, Any]]) -> ParsedCalls:
        """The calls in a whole answer, given the request's tools (OpenAI chat ``tools`` entries)."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        # Parsers keep per-answer state: one each time. Some read the request's tools.
        parser = self._type(self._tokenizer)
        request = ChatCompletionRequest(
            model="", messages=[{"role": "user", "content": ""}], tools=list(tools)
        )
        found = parser.extract_tool_calls(text, request)
        if not found.tools_called:
            return ParsedCalls(text, [])
        calls = [(call.function.name, call.function.arguments) for call in found.tool_calls]
        return ParsedCalls(found.content or None, calls)
