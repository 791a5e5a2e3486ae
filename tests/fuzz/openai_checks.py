"""schemathesis checks for the fuzz run (loaded through SCHEMATHESIS_HOOKS; runs in .venv-fuzz)."""

from __future__ import annotations

import json

import schemathesis


@schemathesis.check
def openai_error_shape(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    """Every 4xx is OpenAI's error object: {"error": {"message", "type", "param", "code"}} with a
    message and a code, and the request's id (``request_id``, as its x-request-id header)."""
    if not 400 <= response.status_code < 500:
        return
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} with a body that is not JSON") from exc
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code", "request_id"}:
        raise AssertionError(f"{response.status_code} not in OpenAI's error shape: {body}")
    sent = response.headers.get("x-request-id")  # schemathesis lists each header's values
    if [error["request_id"]] != (sent if isinstance(sent, list) else [sent]):
        raise AssertionError(f"{response.status_code} without its request id: {body}")
    if not isinstance(error["message"], str) or not isinstance(error["code"], str):
        raise AssertionError(f"{response.status_code} without a message and a string code: {body}")
