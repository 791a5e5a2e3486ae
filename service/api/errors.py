"""Every error leaves the service in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The service's exceptions become HTTP responses here (their status and body: service/serving/errors.py);
request validation errors get the same shape (400, naming the parameter), and anything unexpected
becomes a 500 with no stack trace.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    EngineUnavailableError,
    PowerserveError,
    RateLimitedError,
    ServerOverloadedError,
)
from service.serving.errors import error_body, error_of, status_of, validation_error_body

__all__ = ["error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)


def error_response(exc: PowerserveError) -> JSONResponse:
    status, body = error_of(exc)
    headers = {}
    if isinstance(exc, EngineUnavailableError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, RateLimitedError):
        headers |= exc.headers | {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return JSONResponse(body, status_code=status, headers=headers)


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


async def _on_too_deep(request: Request, exc: Exception) -> JSONResponse:
    # JSON nests by recursion: a hostile body (100,000 nested lists) is the client's error.
    body = error_body(400, "The request is nested too deeply.", code="invalid_value")
    return JSONResponse(body, status_code=400)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    body = error_body(500, "The server had an internal error.", code="internal_error")
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(PowerserveError, _on_service_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RecursionError, _on_too_deep)
    app.add_exception_handler(Exception, _on_unexpected)
