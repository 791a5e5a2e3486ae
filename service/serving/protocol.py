"""OpenAI protocol: request and response models of the endpoints (completions, chat completions,
models, batches, fine-tuning jobs).

Requests accept and ignore fields they do not know (OpenAI clients send many) and validate the ones
they do, so that a bad value is a 400 naming the parameter rather than an engine error. Each request
converts itself into the neutral ``GenerationRequest`` (``to_generation``).

Fields that would change the answer are honoured or refused, never dropped: the ones this server
does not support (legacy ``functions``, vLLM's sampling extras such as ``top_k``, ...) are a 400
naming them unless they hold their neutral value, and unknown fields are logged once by name.

Extensions beside the OpenAI fields: the power route's parameters (``power_method``,
``power_particles``, ``power_alpha``, ``mcmc_steps``, ``block_size``, ``power_stream_lag``,
``power_budget``, ``power_latency_target``, ``power_resampling``; ``extra_body`` in the OpenAI
SDK), vLLM's ``structured_outputs`` (a regex or a choice), and in responses a ``self_reward``
object on every route and a ``power`` report on the power route.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.engines.base import Constraint
from service.errors import InvalidRequestError
from service.generation import GenerationRequest
from service.jobs import BATCH_ENDPOINTS, COMPLETION_WINDOWS, Hyperparameters
from service.pipeline import CacheControl
from service.power import PowerMethod, ResampleAt, Resampling

__all__ = [
    "AnswerFormat",
    "BatchCreateRequest",
    "CacheFields",
    "CalledFunction",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatTool",
    "CheckedRequest",
    "CompletionRequest",
    "ErrorInfo",
    "ErrorResponse",
    "ExpiresAfter",
    "FineTuningJobRequest",
    "FunctionDefinition",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "ModelCard",
    "ModelList",
    "NamedFunction",
    "NamedToolChoice",
    "RequestModel",
    "StreamOptions",
    "StructuredOutputs",
    "TextFormat",
    "TextPart",
    "ToolCall",
    "Usage",
    "new_id",
    "now",
]


logger = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class RequestModel(BaseModel):
    # Unknown fields are accepted and ignored, as OpenAI's own API does for forward compatibility.
    model_config = ConfigDict(extra="ignore")


# Fields some clients send that would change the answer and that this server does not honour, with
# the values that change nothing (which are accepted): anything else is a 400 naming the field.
_UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "functions": ("use `tools`", (None,)),
    "function_call": ("use `tool_choice`", (None,)),
    "audio": ("audio output is not supported", (None,)),
    "modalities": ("only text output is supported", (None, ["text"])),
    "prediction": ("predicted outputs are not supported", (None,)),
    "web_search_options": ("web search is not supported", (None,)),
    "top_k": ("", (None, 0, -1)),
    "min_p": ("", (None, 0)),
    "repetition_penalty": ("", (None, 1)),
    "length_penalty": ("", (None, 1)),
    "use_beam_search": ("beam search is not supported", (None, False)),
    "min_tokens": ("", (None, 0)),
    "ignore_eos": ("", (None, False)),
    "bad_words": ("", (None, [])),
    "allowed_token_ids": ("", (None,)),
    "prompt_logprobs": ("", (None,)),
    "include_stop_str_in_output": ("stop strings are never included in the output", (None, False)),
    "guided_json": ("use `response_format`", (None,)),
    "guided_regex": ("use `structured_outputs`", (None,)),
    "guided_choice": ("use `structured_outputs`", (None,)),
    "guided_grammar": ("grammars are not supported", (None,)),
    "chat_template": ("the model's own chat template is always used", (None,)),
    "chat_template_kwargs": ("the model's own chat template is always used", (None, {})),
    "add_generation_prompt": ("the assistant's turn is always started", (None, True)),
    "continue_final_message": ("a final assistant message is never continued", (None, False)),
    "documents": ("", (None,)),
    "truncate_prompt_tokens": ("prompts are never truncated", (None,)),
    "moderation": ("no moderation is run", (None,)),
    "verbosity": ("", (None, "medium")),
}

# Unknown field names already logged (bounded: a client may send any number of names).
_LOGGED_UNKNOWN: set[str] = set()
_LOGGED_UNKNOWN_MAX = 256
_LOGGED_LOCK = threading.Lock()


def _log_unknown(names: set[str]) -> None:
    names = {name[:64] for name in names}
    with _LOGGED_LOCK:
        new = sorted(names - _LOGGED_UNKNOWN)
        room = _LOGGED_UNKNOWN_MAX - len(_LOGGED_UNKNOWN)
        new = new[: max(room, 0)]
        _LOGGED_UNKNOWN.update(new)
    if new:
        logger.info("ignoring request fields this server does not know: %s", ", ".join(new))


class CheckedRequest(RequestModel):
    """A request body that refuses the unsupported fields it does not define (``unsupported``: name
    -> (why, the values that change nothing)) and logs unknown ones."""

    unsupported: ClassVar[Mapping[str, tuple[str, tuple[Any, ...]]]] = _UNSUPPORTED

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        for name in data.keys() - known:
            if name in cls.unsupported:
                why, neutral = cls.unsupported[name]
                if data[name] not in neutral:
                    raise InvalidRequestError(
                        f"`{name}` is not supported by this server{': ' if why else ''}{why}.",
                        param=name,
                        code="unsupported_parameter",
                    )
        _log_unknown({str(name) for name in data.keys() - known - cls.unsupported.keys()})
        return data


class StreamOptions(RequestModel):
    include_usage: bool = False


class CacheFields(RequestModel):
    """The per-request `cache` object, with LiteLLM's keys."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    no_cache: bool = Field(False, alias="no-cache", description="do not answer from the cache")
    no_store: bool = Field(False, alias="no-store", description="do not store this answer")
    ttl: Annotated[float, Field(gt=0)] | None = Field(None, description="store for this many seconds")
    s_maxage: Annotated[float, Field(ge=0)] | None = Field(
        None, alias="s-maxage", description="accept a cached answer at most this many seconds old"
    )

    def to_control(self) -> CacheControl:
        return CacheControl(
            explicit=True,
            no_cache=self.no_cache,
            no_store=self.no_store,
            ttl=self.ttl,
            s_maxage=self.s_maxage,
        )


# OpenAI's pattern for function and schema names.
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class TextFormat(RequestModel):
    type: Literal["text"]


class JsonObjectFormat(RequestModel):
    type: Literal["json_object"]


class JsonSchemaSpec(RequestModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: Name
    description: str | None = None
    # "schema" would shadow BaseModel.schema().
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(RequestModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


AnswerFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StructuredOutputs(CheckedRequest):
    """vLLM's own ``structured_outputs`` extension, for what ``response_format`` cannot say: a
    regular expression or a choice of answers (exactly one of them)."""

    unsupported: ClassVar[Mapping[str, tuple[str, tuple[Any, ...]]]] = {
        "json": ("use `response_format`", (None,)),
        "json_object": ("use `response_format`", (None, False)),
        "grammar": ("grammars are not supported", (None,)),
        "structural_tag": ("structural tags are not supported", (None,)),
    }

    regex: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    choice: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=1024)]],
            Field(min_length=1, max_length=256),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_of(self) -> StructuredOutputs:
        if (self.regex is None) == (self.choice is None):
            raise ValueError("give exactly one of `regex` and `choice`")
        return self

    def to_constraint(self) -> Constraint:
        if self.regex is not None:
            return Constraint("regex", self.regex)
        return Constraint("choice", json.dumps(self.choice))


def _logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    if value is None:
        return None
    if len(value) > 1024:
        raise ValueError("at most 1024 token ids may be biased")
    if any(not key.isdigit() or len(key) > 9 for key in value):
        raise ValueError("keys must be token ids (non-negative integers)")
    return value


class _SamplingFields(CheckedRequest):
    """Fields both endpoints share."""

    model: str
    n: Annotated[int, Field(ge=1)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    stop: str | list[str] | None = None
    # OpenAI takes any 64-bit integer.
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: Annotated[
        dict[str, Annotated[float, Field(ge=-100, le=100)]] | None, AfterValidator(_logit_bias)
    ] = None
    response_format: AnswerFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    cache: CacheFields | None = None
    # Power route (extra_body in the OpenAI SDK).
    power_method: PowerMethod | None = None
    power_particles: Annotated[int, Field(ge=1, le=256)] | None = None
    power_alpha: Annotated[float, Field(ge=1)] | None = None
    mcmc_steps: Annotated[int, Field(ge=0)] | None = None
    block_size: Annotated[int, Field(ge=1)] | None = None
    power_stream_lag: Annotated[int, Field(ge=0)] | None = None
    power_budget: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    power_latency_target: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] | None = None
    power_resampling: Resampling | None = None
    power_resample_at: ResampleAt | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        words = [value] if isinstance(value, str) else value or []
        if len(words) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(word == "" for word in words):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def cache_control(self) -> CacheControl:
        return self.cache.to_control() if self.cache is not None else CacheControl()

    def biased_token_ids(self) -> list[int]:
        return sorted(int(key) for key in self.logit_bias or {})

    def format_constraint(self) -> tuple[Constraint, str] | None:
        """What ``response_format`` (JSON, or JSON of a schema) or ``structured_outputs`` (a
        regular expression, a choice) constrains the answer to, and the field that asked."""
        fmt = self.response_format
        if self.structured_outputs is not None:
            if fmt is not None and not isinstance(fmt, TextFormat):
                raise InvalidRequestError(
                    "Give `response_format` or `structured_outputs`, not both.",
                    param="structured_outputs",
                )
            return self.structured_outputs.to_constraint(), "structured_outputs"
        if isinstance(fmt, JsonSchemaFormat) and fmt.json_schema.json_schema is not None:
            return Constraint("json", json.dumps(fmt.json_schema.json_schema)), "response_format"
        if isinstance(fmt, JsonObjectFormat | JsonSchemaFormat):
            return Constraint("json_object"), "response_format"
        return None

    def _generation(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_param: str,
        constraint: tuple[Constraint, str] | None = None,
    ) -> GenerationRequest:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        bias = tuple(sorted((int(key), value) for key, value in (self.logit_bias or {}).items()))
        return GenerationRequest(
            prompts=tuple(tuple(prompt) for prompt in prompts),
            n=self.n,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=stop,
            seed=self.seed,
            logprobs=logprobs,
            power_method=self.power_method,
            power_particles=self.power_particles,
            power_alpha=self.power_alpha,
            mcmc_steps=self.mcmc_steps,
            block_size=self.block_size,
            power_stream_lag=self.power_stream_lag,
            power_budget=self.power_budget,
            power_latency_target=self.power_latency_target,
            power_resampling=self.power_resampling,
            power_resample_at=self.power_resample_at,
            prompt_param=prompt_param,
            constraint=constraint[0] if constraint else None,
            constraint_param=constraint[1] if constraint else "response_format",
            logit_bias=bias,
        )


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's default for /v1/completions is 16.
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if any(isinstance(p, list) and not p for p in value):
                raise ValueError("a token-id prompt must not be empty")
        return value

    @field_validator("echo")
    @classmethod
    def _echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value not in (None, 1, info.data.get("n")):
            raise ValueError("best_of is not supported")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The prompts: one text, several texts, one token-id list or several."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]

    def to_generation(self, prompts: list[list[int]]) -> GenerationRequest:
        return self._generation(
            prompts,
            max_tokens=self.max_tokens,
            logprobs=self.logprobs,
            prompt_param="prompt",
            constraint=self.format_constraint(),
        )


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class CalledFunction(RequestModel):
    name: Annotated[str, Field(max_length=64)]
    arguments: Annotated[str, Field(max_length=1 << 20)]


class ToolCall(RequestModel):
    """A tool call of an earlier assistant message, sent back with the conversation."""

    id: Annotated[str, Field(max_length=256)]
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None
    tool_call_id: Annotated[str, Field(max_length=256)] | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it (Hugging Face's conventions): role, plain-text
        content, and an assistant's tool calls with their arguments as an object."""
        if isinstance(self.content, list):
            content = "".join(part.text for part in self.content)
        else:
            content = self.content or ""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": content,
        }
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": _arguments(call)},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def _arguments(call: ToolCall) -> Any:
    """A call's arguments as templates expect them: the object its JSON text holds (the text as is
    when it is not JSON: a model's malformed call sent back)."""
    try:
        return json.loads(call.function.arguments)
    except (ValueError, RecursionError):
        return call.function.arguments


class FunctionDefinition(RequestModel):
    name: Name
    description: Annotated[str, Field(max_length=1 << 16)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(RequestModel):
    name: Name


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    # Newer clients (LangChain) send this instead of max_tokens.
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[ChatTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[ChatTool] | None) -> list[ChatTool] | None:
        names = [tool.function.name for tool in value or []]
        if len(set(names)) < len(names):
            raise ValueError("tool names must be unique")
        return value

    @model_validator(mode="after")
    def _tool_choice(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        names = {tool.function.name for tool in self.tools or []}
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names the function `{choice.function.name}`, which is not in `tools`.",
                param="tool_choice",
            )
        if choice == "required" and not names:
            raise InvalidRequestError(
                "tool_choice `required` needs at least one tool in `tools`.", param="tool_choice"
            )
        return self

    @property
    def tool_mode(self) -> Literal["none", "auto", "required", "named"]:
        """What the answer may be: text only, text or tool calls, tool calls, one named call."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    def to_generation(
        self, prompt_ids: list[int], constraint: tuple[Constraint, str] | None = None
    ) -> GenerationRequest:
        """The generation request; ``constraint``: what the answer must match, and the field that
        asked for it."""
        max_tokens = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._generation(
            [prompt_ids],
            max_tokens=max_tokens,
            logprobs=logprobs,
            prompt_param="messages",
            constraint=constraint,
        )


# --- responses ----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "powerserve"
    root: str | None = None
    route: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None
    # The x-request-id of the request that failed, to quote when reporting it.
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# --- offline work -------------------------------------------------------------------------------


class ExpiresAfter(RequestModel):
    """When an uploaded file expires (OpenAI's bounds: an hour to 30 days after its creation)."""

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=3600, le=30 * 24 * 3600)]

    @classmethod
    def from_form(cls, anchor: Any, seconds: Any) -> ExpiresAfter | None:
        """From a multipart form's ``expires_after[anchor]`` and ``expires_after[seconds]``."""
        if anchor is None and seconds is None:
            return None
        try:
            return cls.model_validate({"anchor": anchor, "seconds": seconds})
        except ValidationError as exc:
            problem = exc.errors()[0]
            field = ".".join(str(part) for part in problem["loc"])
            raise InvalidRequestError(
                f"expires_after.{field}: {problem['msg']}",
                param=f"expires_after.{field}",
                code="invalid_value",
            ) from exc


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 16 or any(len(key) > 64 for key in value):
        raise ValueError("metadata holds at most 16 keys of at most 64 characters")
    return value


# OpenAI's metadata on batches and jobs: up to 16 keys of 64 characters, values of 512.
Metadata = Annotated[dict[str, Annotated[str, Field(max_length=512)]], AfterValidator(_metadata)]


class BatchCreateRequest(RequestModel):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value not in BATCH_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value not in COMPLETION_WINDOWS:
            raise ValueError(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}")
        return value


class FineTuningJobRequest(RequestModel):
    model: str
    training_file: str
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = (
        None
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    validation_file: str | None = None
    metadata: Metadata | None = None
