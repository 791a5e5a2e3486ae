"""Turning text and chat messages into token ids, and token ids back into text.

The gateway tokenises once, with the model directory's own tokenizer and chat template, and sends
token ids to every engine (local or remote), so that an MCMC chain never re-tokenises its prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cachetools import LRUCache

from service.errors import InvalidRequestError

__all__ = ["PromptRenderer", "StopStrings", "TextStream"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Rendered conversations are kept by bytes, not by count: 1,024 chats of 1 MB would be gigabytes.
_CHAT_CACHE_BYTES = 32 * 2**20
# A conversation larger than this is rendered every time (it would push out many small ones).
_CHAT_CACHE_ENTRY_BYTES = 256 * 2**10


def _entry_bytes(entry: tuple[int, tuple[int, ...]]) -> int:
    """An entry's size: its key's length and its token ids."""
    key_bytes, ids = entry
    return key_bytes + 8 * len(ids) + 64


def _max_token_bytes(tokenizer: Any) -> int | None:
    """The most UTF-8 bytes one token stands for, where every byte of a text ends up in some token
    (byte-level BPE, or BPE with byte fallback): then a text of B bytes is at least B / this many
    tokens. None for tokenizers that drop bytes or fold any word into one unknown token."""
    try:
        model = json.loads(tokenizer.backend_tokenizer.to_str())
    except (AttributeError, ValueError):
        return None
    bpe = model.get("model", {})
    byte_level = "ByteLevel" in json.dumps(model.get("pre_tokenizer"))
    if bpe.get("type") != "BPE" or not (byte_level or bpe.get("byte_fallback")):
        return None
    return max((len(token.encode()) for token in tokenizer.get_vocab()), default=None)


class PromptRenderer:
    def __init__(self, model_dir: Path):
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
        # messages JSON -> (its length, token ids): an entry's size counts its key and its ids.
        self._chats: LRUCache[str, tuple[int, tuple[int, ...]]] = LRUCache(
            maxsize=_CHAT_CACHE_BYTES, getsizeof=_entry_bytes
        )
        self._chats_lock = threading.Lock()  # rendering may run in worker threads
        self.max_token_bytes = _max_token_bytes(self.tokenizer)
        # One thread tokenises off the event loop: one thread is one malloc arena, so what a large
        # prompt needs is held once, not once per thread of a pool.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def off_loop(self, work: Callable[[], T]) -> T:
        """``work()`` (tokenising) in the renderer's thread, leaving the event loop free."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def fewest_tokens(self, text: str) -> int:
        """A lower bound on the tokens ``text`` becomes (in a prompt or a chat message): what
        refuses a text far too long for the context before it is tokenised. 0 where the
        tokenizer gives no such bound."""
        if self.max_token_bytes is None:
            return 0
        return -(-len(text.encode()) // self.max_token_bytes)

    def encode_text(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """A completion prompt, with the special tokens the tokenizer adds (as vLLM does)."""
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Chat messages (and the tools the model may call, OpenAI's ``tools`` entries) through the
        model's chat template, ready for the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError(
                "This model has no chat template; use /v1/completions.", param="messages"
            )
        if not self.template_knows_tools and (tools or _has_tool_turns(messages)):
            messages, tools = _hermes_tools(messages, tools or ()), None
        # A conversation seen before (a cache hit, a retry) skips the template and the tokenizer.
        key = json.dumps({"messages": list(messages), "tools": tools}, sort_keys=True)
        with self._chats_lock:
            cached = self._chats.get(key)
        if cached is not None:
            return list(cached[1])
        ids = self._render_chat(key)
        entry = (len(key), ids)
        if _entry_bytes(entry) <= _CHAT_CACHE_ENTRY_BYTES:
            with self._chats_lock:
                self._chats[key] = entry
        return list(ids)

    @property
    def chat_cache_bytes(self) -> int:
        """What the rendered-conversation cache holds now (bounded by _CHAT_CACHE_BYTES)."""
        return int(self._chats.currsize)

    @property
    def template_knows_tools(self) -> bool:
        """Whether the chat template renders tools and tool calls itself."""
        template = self.tokenizer.chat_template
        return isinstance(template, str) and "tools" in template and "tool_calls" in template

    def _render_chat(self, chat_json: str) -> tuple[int, ...]:
        chat = json.loads(chat_json)
        try:
            ids = self.tokenizer.apply_chat_template(
                chat["messages"], tools=chat["tools"], add_generation_prompt=True, tokenize=True
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


# Tools for a template that knows none: Hermes' format (Qwen's and NousResearch's templates), which
# the default tool-call parser, hermes, reads back.
_HERMES_TOOLS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def _has_tool_turns(messages: Sequence[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def _hermes_tools(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The conversation with its tools and tool turns written out as Hermes' text, for a template
    that renders only roles and content: the tools in the system message, an assistant's calls as
    ``<tool_call>`` blocks, a tool's result as a ``<tool_response>`` block."""
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message["content"]
        if message.get("tool_calls"):
            calls = [
                json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
                for c in message["tool_calls"]
            ]
            content = "\n".join([content, *(f"<tool_call>\n{c}\n</tool_call>" for c in calls)])
            content = content.strip()
        if message["role"] == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": message["role"], "content": content})
    if tools:
        listed = "\n".join(json.dumps(tool) for tool in tools)
        preamble = _HERMES_TOOLS.format(tools=listed)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{preamble}"}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


class TextStream:
    """Incremental decoding: the text of tokens as they arrive, a character held back until its
    last byte is there. ``tokenizers``' DecodeStream keeps it linear in the answer's length."""

    def __init__(self, renderer: PromptRenderer):
        from tokenizers.decoders import DecodeStream

        self._backend = renderer.tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def push(self, token_ids: Sequence[int]) -> str:
        return "".join(self._stream.step(self._backend, t) or "" for t in token_ids)


class StopStrings:
    """Where an answer meets its first stop string, found on its decoded text."""

    def __init__(self, renderer: PromptRenderer, stop: Sequence[str]):
        self._renderer = renderer
        self._stop = tuple(stop)

    def cut(self, token_ids: Sequence[int]) -> tuple[int, str] | None:
        """(tokens kept: up to the one completing the first stop, the text before the stop), or
        None when the answer holds no stop string."""
        if not self._stop:
            return None
        text = self._renderer.decode(token_ids)
        hits = [(i, s) for s in self._stop if (i := text.find(s)) >= 0]
        if not hits:
            return None
        start, word = min(hits)
        end = start + len(word)
        # Fewest tokens whose text reaches the end of the stop string (decoded length grows with them).
        lo, hi = 1, len(token_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._renderer.decode(token_ids[:mid])) >= end:
                hi = mid
            else:
                lo = mid + 1
        return lo, text[:start]

    def keep(self, token_ids: Sequence[int]) -> int | None:
        """Tokens to keep of an answer: the power samplers' absorbing stop (service.power.StopAt)."""
        found = self.cut(token_ids)
        return None if found is None else found[0]
