"""OpenAI protocol: request and response models of the endpoints (completions, chat completions,
models, batches, fine-tuning jobs).

Requests accept and ignore fields they do not know (OpenAI clients send many) and validate the ones
they do, so that a bad value is a 400 naming the parameter rather than an engine error. Each request
converts itself into the neutral ``GenerationRequest`` (``to_generation``).

Extensions beside the OpenAI fields: the power route's parameters (``power_method``,
``power_particles``, ``power_alpha``, ``mcmc_steps``, ``block_size``, ``power_stream_lag``;
``extra_body`` in the OpenAI SDK), and in responses a ``self_reward`` object on every route and a
``power`` report on the power route.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from service.errors import InvalidRequestError
from service.generation import GenerationRequest
from service.jobs import BATCH_ENDPOINTS, COMPLETION_WINDOWS, Hyperparameters
from service.pipeline import CacheControl

__all__ = [
    "BatchCreateRequest",
    "CacheFields",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ErrorInfo",
    "ErrorResponse",
    "ExpiresAfter",
    "FineTuningJobRequest",
    "ModelCard",
    "ModelList",
    "StreamOptions",
    "TextPart",
    "Usage",
    "new_id",
    "now",
]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class _Request(BaseModel):
    # Unknown fields are accepted and ignored, as OpenAI's own API does for forward compatibility.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class CacheFields(_Request):
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


class _SamplingFields(_Request):
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
    cache: CacheFields | None = None
    # Power route (extra_body in the OpenAI SDK).
    power_method: Literal["mh", "smc"] | None = None
    power_particles: Annotated[int, Field(ge=1, le=256)] | None = None
    power_alpha: Annotated[float, Field(ge=1)] | None = None
    mcmc_steps: Annotated[int, Field(ge=0)] | None = None
    block_size: Annotated[int, Field(ge=1)] | None = None
    power_stream_lag: Annotated[int, Field(ge=0)] | None = None

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

    def _generation(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_param: str,
    ) -> GenerationRequest:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
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
            prompt_param=prompt_param,
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
            prompts, max_tokens=self.max_tokens, logprobs=self.logprobs, prompt_param="prompt"
        )


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it: role and plain-text content."""
        if isinstance(self.content, list):
            content = "".join(part.text for part in self.content)
        else:
            content = self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    # Newer clients (LangChain) send this instead of max_tokens.
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    def to_generation(self, prompt_ids: list[int]) -> GenerationRequest:
        max_tokens = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._generation(
            [prompt_ids], max_tokens=max_tokens, logprobs=logprobs, prompt_param="messages"
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


class ErrorResponse(BaseModel):
    error: ErrorInfo


# --- offline work -------------------------------------------------------------------------------


class ExpiresAfter(_Request):
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


class BatchCreateRequest(_Request):
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


class FineTuningJobRequest(_Request):
    model: str
    training_file: str
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = (
        None
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    validation_file: str | None = None
    metadata: Metadata | None = None
