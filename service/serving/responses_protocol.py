"""OpenAI's Responses API: the request of ``POST /v1/responses``.

A Responses request is served as a chat completion (service/serving/responses.py), so this model
validates what only the Responses API has — its input items, function tools, ``text.format``, the
fields it refuses — and leaves the sampling fields it shares with chat (``temperature``, ``top_p``,
``seed``, the power extensions) to chat's own validation, whose errors name the same parameters.

Accepted and ignored, as a non-reasoning model should: ``reasoning``, ``include``,
``service_tier``, ``prompt_cache_key``, ``safety_identifier``, ``stream_options`` and every field
this model does not know. Refused with a 400 naming the field, because they would change the answer
and are not supported: ``background: true``, ``prompt``, ``conversation``, ``top_logprobs``,
``max_tool_calls``, ``context_management``, and tools that are not functions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from service.serving.protocol import (
    CheckedRequest,
    JsonObjectFormat,
    Metadata,
    RequestModel,
    TextFormat,
)

__all__ = [
    "MAX_INPUT_ITEMS",
    "MAX_TOOLS",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputItem",
    "MessageItem",
    "ResponseCreateRequest",
    "TextConfig",
    "TextPart",
    "ToolChoiceFunction",
]

# OpenAI's agent CLIs send ~10 tools and conversations of hundreds of items; these bounds leave
# room for that and keep one request's work (and its stored copy) bounded.
MAX_INPUT_ITEMS = 2048
MAX_TOOLS = 128
_MAX_PARTS = 2048


class TextPart(RequestModel):
    """A text part of a message's content (``input_text``, ``output_text``, or chat's ``text``)."""

    type: Literal["input_text", "output_text", "text"]
    text: str


def _joined(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class MessageItem(RequestModel):
    """A message; ``type`` may be left out (OpenAI's "easy input message")."""

    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: Annotated[list[TextPart], Field(max_length=_MAX_PARTS)] | str

    @property
    def text(self) -> str:
        return _joined(self.content)


class FunctionCallItem(RequestModel):
    """A function call the model made earlier, sent back with its output."""

    type: Literal["function_call"]
    id: str | None = None
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(RequestModel):
    """What the caller's function answered to ``call_id``."""

    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str
    output: Annotated[list[TextPart], Field(max_length=_MAX_PARTS)] | str

    @property
    def text(self) -> str:
        return _joined(self.output)


def _item_type(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(
        _item_type,
        custom_error_type="invalid_input_item",
        custom_error_message="an input item is a message, a function_call or a "
        "function_call_output (other item types are not supported)",
    ),
]


class FunctionTool(RequestModel):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(RequestModel):
    type: Literal["function"]
    name: str


class _TextFormatJsonSchema(RequestModel):
    type: Literal["json_schema"]
    name: str
    # ``schema`` would shadow BaseModel.schema: the field is ``json_schema``, read as "schema".
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(RequestModel):
    format: Annotated[
        TextFormat | JsonObjectFormat | _TextFormatJsonSchema, Field(discriminator="type")
    ] = Field(default_factory=lambda: TextFormat(type="text"))

    def to_json(self) -> dict[str, Any]:
        """As a Response echoes it (``schema`` by its name)."""
        return {"format": self.format.model_dump(by_alias=True, exclude_none=True)}

    def response_format(self) -> dict[str, Any] | None:
        """Chat's ``response_format``: None for plain text."""
        fmt = self.format
        if isinstance(fmt, _TextFormatJsonSchema):
            schema = {
                "name": fmt.name,
                "schema": fmt.json_schema,
                "strict": fmt.strict,
                "description": fmt.description,
            }
            return {
                "type": "json_schema",
                "json_schema": {key: value for key, value in schema.items() if value is not None},
            }
        if isinstance(fmt, JsonObjectFormat):
            return {"type": "json_object"}
        return None


# Fields of OpenAI's request that would change the answer and are not served, with the values that
# change nothing (accepted): anything else is a 400 naming the field.
_UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "background": ("a response is answered while its request waits", (None, False)),
    "prompt": ("prompt templates are not stored here; send the input itself", (None,)),
    "conversation": ("conversations are not stored here; use previous_response_id", (None,)),
    "top_logprobs": ("log-probs are not returned by the Responses API here", (None, 0)),
    "max_tool_calls": ("there are no built-in tools", (None,)),
    "context_management": ("context is never compacted", (None, [])),
    "moderation": ("no moderation is run", (None,)),
}


class ResponseCreateRequest(CheckedRequest):
    unsupported = _UNSUPPORTED

    model: str
    # The list first: an invalid item is reported as such, not as "not a string".
    input: Annotated[list[InputItem], Field(max_length=MAX_INPUT_ITEMS)] | str | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    # Checked by chat, whose parameters have the same names (so are tool names and choices).
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    user: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = Field(default_factory=TextConfig)
    truncation: Literal["auto", "disabled"] = "disabled"
    store: bool = True
    stream: bool = False
    metadata: Metadata | None = None
    # Power route (extra_body in the OpenAI SDK); checked by chat.
    power_method: str | None = None
    power_particles: int | None = None
    power_alpha: float | None = None
    mcmc_steps: int | None = None
    block_size: int | None = None
    power_stream_lag: int | None = None
    power_budget: float | None = None
    power_latency_target: float | None = None
    power_resampling: str | None = None
    power_resample_at: str | None = None

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, value: Any) -> Any:
        for index, tool in enumerate(value if isinstance(value, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(
                    f"only function tools are supported; tools[{index}] is of type {kind!r}"
                )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(
                "only 'none', 'auto', 'required' or a function ({'type': 'function', 'name': ...}) "
                f"may be chosen; got type {value.get('type')!r}"
            )
        return value

    def tool_choice_json(self) -> str | dict[str, Any]:
        """As a Response echoes it."""
        if isinstance(self.tool_choice, ToolChoiceFunction):
            return self.tool_choice.model_dump()
        return self.tool_choice
