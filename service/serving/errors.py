"""OpenAI's error object, and which status each of the service's exceptions is.

The serving layer needs both without HTTP: a batch line's error is written into the batch's error
file exactly as the endpoint would have answered it. ``service.api.errors`` turns the same mapping
into HTTP responses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from service.errors import (
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    PowerserveError,
    RateLimitedError,
    ResourceNotFoundError,
    StateUnavailableError,
)
from service.request_ids import current_request_id
from service.serving.protocol import ErrorInfo, ErrorResponse

__all__ = ["error_body", "error_of", "status_of", "validation_error_body"]

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


def status_of(exc: PowerserveError) -> int:
    if isinstance(exc, InvalidRequestError):
        return 400
    if isinstance(exc, ModelNotFoundError | ResourceNotFoundError):
        return 404
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, RateLimitedError):
        return 429
    if isinstance(exc, EngineUnavailableError | StateUnavailableError):
        return 503
    if isinstance(exc, EngineError):
        return 500
    return 500


def error_body(
    status: int, message: str, *, param: str | None = None, code: Any = None, kind: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object; ``kind`` (its ``type``) follows from the status unless given."""
    kind = kind or _STATUS_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    info = ErrorInfo(message=message, type=kind, param=param, code=code, request_id=current_request_id())
    body = ErrorResponse(error=info).model_dump()
    if info.request_id is None:  # outside an HTTP request: a batch line's error, say
        del body["error"]["request_id"]
    return body


def error_of(exc: PowerserveError) -> tuple[int, dict[str, Any]]:
    """(status, body) of a service error, as an endpoint answers it."""
    status = status_of(exc)
    kind = exc.kind if isinstance(exc, RateLimitedError) else None  # "requests" or "tokens"
    return status, error_body(status, exc.message, param=exc.param, code=exc.code, kind=kind)


# pydantic names the branch of a union it tried (`stop.list[str].0`); the parameter is what is left.
_UNION_BRANCH = re.compile(
    r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*|constrained-.*)$"
)


def _validation_param(error: dict[str, Any]) -> str | None:
    """The parameter a pydantic error is about: its location without "body" and union branches."""
    names = [str(part) for part in error.get("loc", ()) if part != "body"]
    return ".".join(n for n in names if not _UNION_BRANCH.match(n)) or None


def validation_error_body(errors: Sequence[Any]) -> dict[str, Any]:
    """The 400 body of a request that failed validation (pydantic's error list), naming the
    parameter: the same for an HTTP body and for a batch line's body."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_body(400, "The request body is not valid JSON.", code="invalid_json")
    param = _validation_param(first)
    message = str(first.get("msg", "Invalid request."))
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    body = error_body(400, message, param=param, code="invalid_value")
    return dict(json.loads(json.dumps(body, default=str)))
