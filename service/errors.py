"""Exceptions of the service.

Every layer raises these; only ``service.api.errors`` turns them into HTTP responses.

    PowerserveError
    ├── InvalidRequestError            the request cannot be served as asked (400)
    │   ├── ContextLengthError         prompt + answer exceed the model's context (400)
    │   └── TokenBudgetError           a power request would generate too many tokens (400)
    ├── ModelNotFoundError             no route serves the requested model (404)
    ├── ResourceNotFoundError          no file, batch, job or response has the id asked for (404)
    ├── PayloadTooLargeError           an upload exceeds the size cap (413)
    ├── EngineUnavailableError         the engine is starting, dead or has no healthy worker (503)
    │   └── ServerOverloadedError      the work in flight is at its cap (503, admission control)
    ├── RateLimitedError               a key is over its requests or tokens per minute (429)
    │   └── TooManyActiveError         a project has as many batches or jobs running as it may (429)
    └── EngineError                    the engine failed on this request (500)

Callers that only need "did it work" catch ``PowerserveError``.
"""

from __future__ import annotations

__all__ = [
    "ContextLengthError",
    "EngineError",
    "EngineUnavailableError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "PowerserveError",
    "RateLimitedError",
    "ResourceNotFoundError",
    "ServerOverloadedError",
    "StateUnavailableError",
    "TokenBudgetError",
    "TooManyActiveError",
]


class PowerserveError(Exception):
    """Base of every error the service raises on purpose."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(PowerserveError):
    """A parameter is out of range or inconsistent; ``param`` names it, ``code`` says how
    (``invalid_value`` unless a more precise one is given)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code or "invalid_value")


class ContextLengthError(InvalidRequestError):
    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, code="context_length_exceeded")


class TokenBudgetError(InvalidRequestError):
    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, code="token_budget_exceeded")


class ModelNotFoundError(PowerserveError):
    def __init__(self, model: str):
        super().__init__(
            f"The model `{model}` does not exist. GET /v1/models lists the models served.",
            param="model",
            code="model_not_found",
        )


class EngineUnavailableError(PowerserveError):
    """The engine cannot take requests now; ``retry_after`` hints when to try again (seconds)."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message, code="engine_unavailable")
        self.retry_after = retry_after


class EngineError(PowerserveError):
    """The engine failed while serving this request; others may still succeed."""

    def __init__(self, message: str):
        super().__init__(message, code="engine_error")


class ResourceNotFoundError(PowerserveError):
    """No file, batch, fine-tuning job or stored response has the id asked for."""

    def __init__(
        self, kind: str, resource_id: str, *, param: str | None = None, code: str = "not_found"
    ):
        super().__init__(f"No {kind} with id `{resource_id}`.", param=param, code=code)


class StateUnavailableError(PowerserveError):
    """The shared store of files and batches (Redis) cannot be reached now."""

    def __init__(self, message: str):
        super().__init__(message, code="state_unavailable")


class PayloadTooLargeError(PowerserveError):
    """An upload exceeds the service's size cap."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, code="file_too_large")


class ServerOverloadedError(EngineUnavailableError):
    """The engine work in flight is at its cap (admission control): refused at once, not queued."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message, retry_after=retry_after)
        self.code = "server_overloaded"


class RateLimitedError(PowerserveError):
    """A key went over a limit: ``kind`` is "requests" or "tokens"; ``headers`` are OpenAI's
    x-ratelimit-* headers; ``retry_after`` is when the window resets (seconds)."""

    def __init__(
        self, message: str, *, kind: str, retry_after: float, headers: dict[str, str] | None = None
    ):
        super().__init__(message, code="rate_limit_exceeded")
        self.kind = kind
        self.retry_after = retry_after
        self.headers = headers or {}


class TooManyActiveError(RateLimitedError):
    """A project already has as many batches (or fine-tuning jobs) not yet final as it may: a new
    one is refused until one of them ends (``retry_after``: when to look again)."""

    def __init__(self, message: str, *, retry_after: float = 60.0):
        super().__init__(message, kind="requests", retry_after=retry_after)
        self.code = "too_many_active"
