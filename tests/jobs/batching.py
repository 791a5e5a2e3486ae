"""Helpers of the batch tests: input lines, submitting, waiting, reading the output."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai

from tests.conftest import TINY_MODEL_NAME

PLAIN, POWER, DISTILLED = TINY_MODEL_NAME, f"{TINY_MODEL_NAME}-power", f"{TINY_MODEL_NAME}-distilled"
FINAL = ("completed", "failed", "cancelled", "expired")


def line(custom_id: str, body: dict[str, Any], url: str = "/v1/completions") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def completion(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "a b", "max_tokens": 4} | extra


def submit(
    client: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/completions", **kw: Any
):
    content = "".join(json.dumps(x) + "\n" for x in lines).encode()
    file = client.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kw,
    )


def wait(client: openai.OpenAI, batch_id: str, *, until: tuple[str, ...] = FINAL, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} is still {batch.status}")


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(x) for x in text.splitlines() if x.strip()]
