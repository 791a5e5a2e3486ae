"""Every error leaves the service in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The service's exceptions map onto status codes here and only here; request validation errors get the
same shape (400, naming the parameter), and anything unexpected becomes a 500 with no stack trace.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.protocol import ErrorInfo, ErrorResponse
from service.errors import (
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    PowerserveError,
    RateLimitedError,
    ResourceNotFoundError,
    ServerOverloadedError,
    StateUnavailableError,
)

__all__ = [
    "error_body",
    "error_response",
    "install_error_handlers",
    "status_of",
    "validation_error_body",
]

logger = logging.getLogger(__name__)

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
) -> dict:
    """OpenAI's error object; ``kind`` (its ``type``) follows from the status unless given."""
    kind = kind or _STATUS_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    info = ErrorInfo(message=message, type=kind, param=param, code=code)
    return ErrorResponse(error=info).model_dump()


def error_response(exc: PowerserveError) -> JSONResponse:
    status = status_of(exc)
    headers = {}
    kind = None
    if isinstance(exc, EngineUnavailableError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, RateLimitedError):
        # OpenAI names the exhausted limit in `type`: "requests" or "tokens".
        kind = exc.kind
        headers |= exc.headers | {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    body = error_body(status, exc.message, param=exc.param, code=exc.code, kind=kind)
    return JSONResponse(body, status_code=status, headers=headers)


# pydantic names the branch of a union it tried (`stop.list[str].0`); the parameter is what is left.
_UNION_BRANCH = re.compile(
    r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-.*|constrained-.*)$"
)


def _validation_param(error: dict[str, Any]) -> str | None:
    """The parameter a pydantic error is about: its location without "body" and union branches."""
    names = [str(part) for part in error.get("loc", ()) if part != "body"]
    return ".".join(n for n in names if not _UNION_BRANCH.match(n)) or None


def validation_error_body(errors: Sequence[Any]) -> dict:
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


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(validation_error_body(exc.errors()), status_code=400)


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PowerserveError)
    if status_of(exc) >= 500 and not isinstance(exc, ServerOverloadedError):  # overload: counted
        logger.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = error_body(exc.status_code, str(exc.detail), code=_http_code(exc.status_code))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _http_code(status: int) -> str:
    """A string code for a bare HTTP error (OpenAI's codes are strings): 405 -> method_not_allowed."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    body = error_body(500, "The server had an internal error.", code="internal_error")
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(PowerserveError, _on_service_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
