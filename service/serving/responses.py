"""The Responses resource: ``POST /v1/responses`` and the responses it stores, served as chat.

A request becomes a chat completion body and goes through ChatServing as a chat request would
(admission, charging, the cache, the power route); its answer is translated back:

    input items       -> chat messages: the instructions first (a system message), then the
                         conversation stored with ``previous_response_id`` (its input items and
                         output), then the new items; a function_call joins an assistant message's
                         tool_calls, a function_call_output is a tool message
    tools, tool_choice, text.format, max_output_tokens
                      -> tools, tool_choice, response_format, max_completion_tokens
    chat's message    -> a message item (output_text) and function_call items; a finish_reason of
                         "length" makes the response incomplete (max_output_tokens)
    chat's chunks     -> Responses' events, numbered by sequence_number: response.created and
                         .in_progress, each output item added, its deltas, done, then
                         response.completed or .incomplete; an error mid-stream is an ``error``
                         event and response.failed

A stored response (``store: true``, the default) belongs to the caller's project: for another
project it does not exist (404), as files do. Only background responses can be cancelled, and this
server makes none.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import ValidationError

from service.errors import (
    InvalidRequestError,
    PowerserveError,
    RateLimitedError,
    ResourceNotFoundError,
    StateUnavailableError,
)
from service.pipeline import POWER_FIELDS, ModelRoute
from service.serving.caller import Caller
from service.serving.completions import Answer, ChatServing, Prepared, StreamedAnswer
from service.serving.errors import error_of, validation_error_body
from service.serving.pages import list_page
from service.serving.protocol import ChatCompletionRequest, now
from service.serving.responses_protocol import (
    FunctionCallItem,
    FunctionTool,
    InputItem,
    MessageItem,
    ResponseCreateRequest,
    ToolChoiceFunction,
)
from service.serving.stored_responses import StoredResponse, StoredResponses

__all__ = [
    "PreparedResponse",
    "ResponsesServing",
    "chat_body",
    "chat_messages",
    "input_items",
    "new_item_id",
    "response_events",
    "response_from_chat",
    "response_head",
]

logger = logging.getLogger(__name__)

# The ids this server gives responses: anything else is not found without asking the store.
_RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")
# Chat's parameters that have another name here; the others have the same.
_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text",
}
_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def new_item_id(prefix: str) -> str:
    """OpenAI's id shape: ``resp_…``, ``msg_…``, ``fc_…``."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class PreparedResponse:
    """A Responses request, translated and prepared as chat, ready to serve."""

    chat: Prepared
    request: ResponseCreateRequest
    input_items: list[dict[str, Any]]  # the whole conversation it answers, stored with it
    head: dict[str, Any]  # the response as it begins: in progress, no output

    @property
    def route(self) -> ModelRoute:
        return self.chat.route

    @property
    def stream(self) -> bool:
        return self.chat.stream


class ResponsesServing:
    def __init__(self, chat: ChatServing, store: StoredResponses):
        self.chat = chat
        self.store = store

    async def prepare(self, body: ResponseCreateRequest, caller: Caller) -> PreparedResponse:
        """The request as chat: raises (a 4xx) before any work, as chat's ``prepare``."""
        history = await self._conversation(body.previous_response_id, caller)
        items = history + input_items(body.input)
        with _named_as_responses():
            chat_request = ChatCompletionRequest.model_validate(chat_body(body, items))
            prepared = await self.chat.prepare(chat_request, caller)
        head = response_head(body, new_item_id("resp"), prepared.route.model_id)
        return PreparedResponse(prepared, body, items, head)

    async def answer(self, prepared: PreparedResponse, caller: Caller) -> Answer:
        with _named_as_responses():
            answered = await self.chat.answer(prepared.chat, caller)
        response = response_from_chat(prepared.head, answered.body)
        await self._keep(prepared, response, caller)
        return Answer(response, answered.headers)

    async def stream(self, prepared: PreparedResponse, caller: Caller) -> StreamedAnswer:
        with _named_as_responses():
            streamed = await self.chat.stream(prepared.chat, caller)
        events = self._kept(prepared, response_events(prepared.head, streamed.chunks), caller)
        return StreamedAnswer(events, streamed.headers)

    async def retrieve(self, response_id: str, caller: Caller) -> dict[str, Any]:
        return (await self._owned(response_id, caller)).response

    async def delete(self, response_id: str, caller: Caller) -> dict[str, Any]:
        await self._owned(response_id, caller)
        await self.store.delete(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, response_id: str, caller: Caller) -> NoReturn:
        """OpenAI's answer for a response that was not created in the background."""
        await self._owned(response_id, caller)
        raise InvalidRequestError(
            "Only responses created with background=true can be cancelled.", param="response_id"
        )

    async def input_items(
        self, response_id: str, caller: Caller, *, limit: int, ascending: bool, after: str | None
    ) -> dict[str, Any]:
        """One page of the conversation a response answered (previous responses' turns too)."""
        items = (await self._owned(response_id, caller)).input_items
        ordered = items if ascending else items[::-1]
        start = 0
        if after is not None:
            ids = [item["id"] for item in ordered]
            if after not in ids:
                raise InvalidRequestError(
                    f"Response {response_id} has no input item `{after}`.", param="after"
                )
            start = ids.index(after) + 1
        return list_page(ordered[start : start + limit], start + limit < len(ordered))

    # --- steps ------------------------------------------------------------------------------------

    async def _owned(
        self, response_id: str, caller: Caller, *, param: str = "response_id", code: str = "not_found"
    ) -> StoredResponse:
        """The stored response, if it exists for this caller (another project's does not)."""
        record = await self.store.load(response_id) if _RESPONSE_ID.fullmatch(response_id) else None
        if record is None or not caller.sees(record.project):
            raise ResourceNotFoundError("response", response_id, param=param, code=code)
        return record

    async def _conversation(self, previous_id: str | None, caller: Caller) -> list[dict[str, Any]]:
        """What a response continues: its predecessor's input items and output."""
        if previous_id is None:
            return []
        record = await self._owned(
            previous_id, caller, param="previous_response_id", code="previous_response_not_found"
        )
        return [*record.input_items, *record.response["output"]]

    async def _keep(self, prepared: PreparedResponse, response: dict[str, Any], caller: Caller) -> None:
        if not prepared.request.store:
            return
        record = StoredResponse(response, prepared.input_items, caller.project)
        with contextlib.suppress(StateUnavailableError):  # logged by the store; the answer stands
            await self.store.save(record)

    async def _kept(
        self, prepared: PreparedResponse, events: AsyncIterator[dict[str, Any]], caller: Caller
    ) -> AsyncIterator[dict[str, Any]]:
        """The events; the final response is stored before its event is sent."""
        async for event in events:
            if event["type"] in _FINAL_EVENTS:
                await self._keep(prepared, event["response"], caller)
            yield event


@contextlib.contextmanager
def _named_as_responses() -> Iterator[None]:
    """Chat's errors about the translated body, naming the Responses parameter they are about."""
    try:
        yield
    except ValidationError as exc:
        error = validation_error_body(exc.errors())["error"]
        chat_param, message = error["param"], error["message"]
        param = _param(chat_param)
        if chat_param and param != chat_param:
            message = f"{param}{message.removeprefix(chat_param)}"
        raise InvalidRequestError(message, param=param) from exc
    except PowerserveError as exc:
        exc.param = _param(exc.param)
        raise


def _param(chat_param: str | None) -> str | None:
    """``messages.3.content`` -> ``input`` (positions differ: instructions and history come first)."""
    if chat_param is None:
        return None
    head = chat_param.split(".", 1)[0]
    return _PARAMS.get(head, chat_param)


# --- requests -----------------------------------------------------------------------------------


def input_items(given: list[InputItem] | str | None) -> list[dict[str, Any]]:
    """A request's input as the items ``input_items`` lists, each with an id."""
    if given is None:
        return []
    if isinstance(given, str):
        return [_input_message(new_item_id("msg"), "user", given)]
    return [_input_item(item) for item in given]


def _input_item(item: InputItem) -> dict[str, Any]:
    if isinstance(item, MessageItem):
        item_id = item.id or new_item_id("msg")
        if item.role == "assistant":
            return _output_message(item_id, item.text, "completed")
        return _input_message(item_id, item.role, item.text)
    if isinstance(item, FunctionCallItem):
        item_id = item.id or new_item_id("fc")
        return _function_call(item_id, item.call_id, item.name, item.arguments, "completed")
    return {
        "id": item.id or new_item_id("fco"),
        "type": "function_call_output",
        "call_id": item.call_id,
        "output": item.text,
        "status": "completed",
    }


def _input_message(item_id: str, role: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": role,
        "content": [{"type": "input_text", "text": text}],
        "status": "completed",
    }


def _output_message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
        "status": status,
    }


def _function_call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat's messages for a conversation of items (input items, and output items of earlier
    responses). Function calls in a row are one assistant message's tool calls."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if item["type"] == "message":
            text = "".join(part["text"] for part in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif item["type"] == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:  # function_call_output
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def chat_body(request: ResponseCreateRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completion request that answers ``request``, whose conversation is ``items``."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request.instructions, items),
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "user": request.user,
        "tools": [_chat_tool(tool) for tool in request.tools] or None,
        "tool_choice": _chat_tool_choice(request.tool_choice),
        "parallel_tool_calls": request.parallel_tool_calls,
        "response_format": request.text.response_format(),
        "stream": request.stream,
        # The usage chunk carries the usage, self_reward and power the last event reports.
        "stream_options": {"include_usage": True} if request.stream else None,
        **request.model_dump(include=set(POWER_FIELDS)),
    }
    return {name: value for name, value in body.items() if value is not None}


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function = tool.model_dump(exclude={"type"}, exclude_none=True)
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | ToolChoiceFunction) -> str | dict[str, Any]:
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


# --- responses ----------------------------------------------------------------------------------


def response_head(request: ResponseCreateRequest, response_id: str, model: str) -> dict[str, Any]:
    """The response as it begins (in progress, no output): what the request set, echoed."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": now(),
        "status": "in_progress",
        "model": model,
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "previous_response_id": request.previous_response_id,
        "max_output_tokens": request.max_output_tokens,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "tools": [tool.model_dump(exclude_none=True) for tool in request.tools],
        "tool_choice": request.tool_choice_json(),
        "parallel_tool_calls": request.parallel_tool_calls,
        "text": request.text.to_json(),
        "truncation": request.truncation,
        "store": request.store,
        "background": False,
        "metadata": request.metadata or {},
        "user": request.user,
    }


def response_from_chat(head: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """The finished response of a chat completion (one choice)."""
    choice = chat["choices"][0]
    message = choice.get("message") or {}
    status = _status(choice.get("finish_reason"))
    calls = message.get("tool_calls") or []
    text = message.get("content") or ""
    output = [_output_message(new_item_id("msg"), text, status)] if text or not calls else []
    for call in calls:
        function = call.get("function") or {}
        call_id = call.get("id") or new_item_id("call")
        name, arguments = function.get("name", ""), function.get("arguments", "")
        output.append(_function_call(new_item_id("fc"), call_id, name, arguments, status))
    return _finished(head, status, output, chat.get("usage"), _extensions(chat))


def _status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def _finished(
    head: dict[str, Any],
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    extensions: dict[str, Any],
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    ending = {"status": status, "output": output, "usage": _usage(usage), "error": error}
    return head | ending | {"incomplete_details": incomplete} | extensions


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _extensions(chat: dict[str, Any]) -> dict[str, Any]:
    """powerserve's own fields beside usage: self_reward, and the power route's report."""
    return {name: chat[name] for name in ("self_reward", "power") if name in chat}


async def response_events(
    head: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """The Responses events of a chat completion's chunks (one choice, with a usage chunk)."""
    stream = _EventStream(head)
    yield stream.event("response.created", response=head)
    yield stream.event("response.in_progress", response=head)
    try:
        async for chunk in chunks:
            for event in stream.take(chunk):
                yield event
    except PowerserveError as exc:
        for event in stream.failed(exc):
            yield event
        return
    for event in stream.finished():
        yield event


class _EventStream:
    """The output items a streamed response's chunks build, and the events that say so. Items are
    opened as their first delta arrives and closed, in order, when the answer ends."""

    def __init__(self, head: dict[str, Any]):
        self.head = head
        self.sequence = 0
        self.items: list[dict[str, Any]] = []
        self.message: int | None = None  # the message item's output index, once opened
        self.calls: dict[int, int] = {}  # chat's tool-call index -> its item's output index
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.extensions: dict[str, Any] = {}

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        numbered = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return numbered

    def take(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if chunk.get("usage") is not None:
            self.usage, self.extensions = chunk["usage"], _extensions(chunk)
        return events

    def finished(self) -> list[dict[str, Any]]:
        status = _status(self.finish_reason)
        events = [] if self.items else self._open_message()  # an empty answer is an empty message
        for index, item in enumerate(self.items):
            item["status"] = status
            where = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                part = item["content"][0]
                events.append(
                    self.event(
                        "response.output_text.done",
                        **where,
                        content_index=0,
                        text=part["text"],
                        logprobs=[],
                    )
                )
                events.append(
                    self.event("response.content_part.done", **where, content_index=0, part=dict(part))
                )
            else:
                events.append(
                    self.event(
                        "response.function_call_arguments.done",
                        **where,
                        arguments=item["arguments"],
                    )
                )
            events.append(
                self.event("response.output_item.done", output_index=index, item=copy.deepcopy(item))
            )
        response = _finished(self.head, status, self.items, self.usage, self.extensions)
        return [*events, self.event(f"response.{status}", response=response)]

    def failed(self, exc: PowerserveError) -> list[dict[str, Any]]:
        """What the client sees of an error mid-stream: the error, then the response failed."""
        _status_code, body = error_of(exc)
        error = body["error"]
        code = "rate_limit_exceeded" if isinstance(exc, RateLimitedError) else "server_error"
        for item in self.items:
            item["status"] = "incomplete"
        response = _finished(
            self.head,
            "failed",
            self.items,
            self.usage,
            self.extensions,
            error={"code": code, "message": exc.message},
        )
        return [
            self.event("error", code=error["code"], message=error["message"], param=error["param"]),
            self.event("response.failed", response=response),
        ]

    def _open_message(self) -> list[dict[str, Any]]:
        self.message = len(self.items)
        item = _output_message(new_item_id("msg"), "", "in_progress")
        self.items.append(item)
        where = {"item_id": item["id"], "output_index": self.message}
        part = dict(item["content"][0])
        return [
            self.event(
                "response.output_item.added", output_index=self.message, item=item | {"content": []}
            ),
            self.event("response.content_part.added", **where, content_index=0, part=part),
        ]

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = self._open_message() if self.message is None else []
        assert self.message is not None
        item = self.items[self.message]
        item["content"][0]["text"] += text
        events.append(
            self.event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.message,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool call's delta: its first (id, name) opens a function_call item."""
        events: list[dict[str, Any]] = []
        function = call.get("function") or {}
        index = call.get("index", 0)
        if index not in self.calls:
            self.calls[index] = len(self.items)
            call_id = call.get("id") or new_item_id("call")
            item = _function_call(
                new_item_id("fc"), call_id, function.get("name") or "", "", "in_progress"
            )
            self.items.append(item)
            events.append(
                self.event(
                    "response.output_item.added",
                    output_index=self.calls[index],
                    item=copy.deepcopy(item),
                )
            )
        output_index = self.calls[index]
        item = self.items[output_index]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=output_index,
                    delta=function["arguments"],
                )
            )
        return events
