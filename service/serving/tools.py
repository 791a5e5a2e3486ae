"""Tool calling on /v1/chat/completions: what a request's ``tools`` and ``tool_choice`` make of its
prompt, its constraint and its answers.

    none       tools are not shown to the model; answers are text
    auto       tools are rendered into the prompt; the model's own call syntax is parsed out of
               its answer (service/engines/tool_parsers.py)
    required   the answer is constrained to a JSON list of calls of the given tools
    named      the answer is constrained to the named function's arguments

Required and named calls are made by constrained decoding (the engine's structured outputs), so
they work on any model, whether or not its template knows tools; ``auto`` depends on the model.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from service.engines.base import Constraint
from service.engines.tool_parsers import ToolCallParser
from service.serving.protocol import ChatCompletionRequest, NamedToolChoice

__all__ = ["ToolCallStream", "ToolCalling"]


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": _call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


class ToolCalling:
    """One chat request's tools."""

    def __init__(self, request: ChatCompletionRequest, parser: ToolCallParser):
        self.mode = request.tool_mode
        self.tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
        self.named = (
            request.tool_choice.function.name
            if isinstance(request.tool_choice, NamedToolChoice)
            else None
        )
        # OpenAI's default is to allow several calls in one answer.
        self.parallel = request.parallel_tool_calls is not False
        self.parser = parser

    @property
    def shown(self) -> list[dict[str, Any]] | None:
        """The tools the chat template renders into the prompt (none when they may not be called)."""
        return self.tools if self.mode != "none" else None

    def constraint(self) -> tuple[Constraint, str] | None:
        """What a required or named call constrains the answer to, and the field that asks for it."""
        if self.mode == "named":
            return Constraint("json", json.dumps(self._parameters(self.named))), "tool_choice"
        if self.mode == "required":
            calls: dict[str, Any] = {
                "type": "array",
                "minItems": 1,
                "items": {"anyOf": [self._call_schema(tool) for tool in self.tools]},
            }
            if not self.parallel:
                calls["maxItems"] = 1
            return Constraint("json", json.dumps(calls)), "tool_choice"
        return None

    def message(self, text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
        """A whole answer as an assistant message (content and tool calls) and its finish reason."""
        content, calls = self._parse(text)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return message, _finish_reason(finish_reason, bool(calls))

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self)

    # --- parsing --------------------------------------------------------------------------------

    def _parameters(self, name: str | None) -> dict[str, Any]:
        tool = next(t for t in self.tools if t["function"]["name"] == name)
        parameters: dict[str, Any] = tool["function"].get("parameters") or {"type": "object"}
        return parameters

    def _call_schema(self, tool: dict[str, Any]) -> dict[str, Any]:
        name = tool["function"]["name"]
        return {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [name]},
                "parameters": self._parameters(name),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }

    def _parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, tool calls) of a whole answer."""
        if self.mode == "named":
            assert self.named is not None
            return None, [_call(self.named, text)]
        if self.mode == "required":
            try:
                listed = json.loads(text)
                calls = [_call(c["name"], json.dumps(c["parameters"])) for c in listed]
            except (ValueError, TypeError, KeyError, RecursionError):
                return text, []  # cut short by max_tokens: the text is all there is
            return None, calls
        if self.mode == "auto":
            parsed = self.parser.extract(text, self.tools)
            calls = [_call(name, arguments) for name, arguments in parsed.calls]
            return parsed.content, calls if self.parallel else calls[:1]
        return text, []


class ToolCallStream:
    """One streamed choice's content and tool-call deltas, as OpenAI streams them: a named call's
    arguments as they are generated, other calls whole when the answer ends; text before an
    ``auto`` call streams as it comes."""

    def __init__(self, tools: ToolCalling):
        self.tools = tools
        self.text = ""
        self.sent = 0  # characters of text sent as content
        self.called = False
        self._call_id = _call_id()

    def push(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content, tool-call deltas) to send for the next ``text`` of the answer."""
        self.text += text
        mode = self.tools.mode
        if mode == "named":
            first = not self.called
            self.called = True
            delta: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
            if first:
                delta = {"index": 0, "id": self._call_id, "type": "function"} | delta
                delta["function"] = {"name": self.tools.named, "arguments": text}
            return "", [delta]
        if mode == "none":
            return self._content(len(self.text)), []
        if mode == "auto" and self.tools.parser.start_marker is not None:
            return self._content(_sendable(self.text, self.tools.parser.start_marker)), []
        return "", []  # required, or a syntax without a marker: all of it waits for the parse

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(content, tool-call deltas) still to send when the answer has ended."""
        if self.tools.mode == "none":
            return self._content(len(self.text)), []
        if self.tools.mode == "named":
            return "", []
        content, calls = self.tools._parse(self.text)
        if not calls:
            return self._content(len(self.text)), []
        self.called = True
        rest = (content or "")[self.sent :]
        return rest, [{"index": i} | call for i, call in enumerate(calls)]

    def finish_reason(self, reason: str) -> str:
        return _finish_reason(reason, self.called)

    def _content(self, upto: int) -> str:
        piece = self.text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return piece


def _sendable(text: str, marker: str) -> int:
    """How much of ``text`` is surely not part of a tool call: up to the marker, or up to a tail that
    could be the marker's beginning."""
    found = text.find(marker)
    if found >= 0:
        return found
    for keep in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-keep:]):
            return len(text) - keep
    return len(text)


def _finish_reason(reason: str, called: bool) -> str:
    return "tool_calls" if called and reason == "stop" else reason
