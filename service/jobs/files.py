"""Uploaded files: what is accepted, checked once at upload.

A file is JSONL (one JSON object per line; blank lines are skipped), at most ``max_bytes`` long
(413 above) and ``max_lines`` lines (400 above). A line that is not a JSON object is refused with its
line number, so a client learns at upload, not hours later, that line 4,812 is broken.
Batch lines are checked against their batch's endpoint when the batch validates (batches.py);
fine-tuning files must hold a ``messages`` list on every line.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import InvalidRequestError, PayloadTooLargeError

__all__ = ["INPUT_PURPOSES", "check_upload", "parse_jsonl"]

# What clients upload; the service writes batch_output (and fine-tune-results) itself.
INPUT_PURPOSES = ("batch", "fine-tune")


def parse_jsonl(content: bytes, *, max_lines: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a JSONL file with their 1-based line numbers; raises ``InvalidRequestError``
    naming the first bad line."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("The file is not UTF-8 text.", param="file") from exc
    objects: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if max_lines is not None and len(objects) >= max_lines:
            raise InvalidRequestError(
                f"The file has more than {max_lines} lines (the most one file may hold).",
                param="file",
                code="too_many_lines",
            )
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"Line {number} is not valid JSON: {exc.msg} (column {exc.colno}).",
                param="file",
                code="invalid_jsonl",
            ) from exc
        except RecursionError as exc:  # json nests by recursion: a hostile line must not be a 500
            raise InvalidRequestError(
                f"Line {number} is nested too deeply.", param="file", code="invalid_jsonl"
            ) from exc
        if not isinstance(value, dict):
            raise InvalidRequestError(
                f"Line {number} is not a JSON object.", param="file", code="invalid_jsonl"
            )
        objects.append((number, value))
    return objects


def check_upload(content: bytes, purpose: str, *, max_bytes: int, max_lines: int) -> None:
    """Refuse a file the service could not use: too big, not JSONL, or (fine-tune) lines without
    chat messages."""
    if purpose not in INPUT_PURPOSES:
        raise InvalidRequestError(
            f"purpose must be one of {', '.join(INPUT_PURPOSES)}, not {purpose!r}.", param="purpose"
        )
    if len(content) > max_bytes:
        raise PayloadTooLargeError(
            f"The file is {len(content)} bytes; the most accepted is {max_bytes}.", param="file"
        )
    objects = parse_jsonl(content, max_lines=max_lines)
    if not objects:
        raise InvalidRequestError("The file holds no lines.", param="file", code="empty_file")
    if purpose == "fine-tune":
        for number, value in objects:
            messages = value.get("messages")
            if not isinstance(messages, list) or not messages:
                raise InvalidRequestError(
                    f"Line {number} has no `messages` list (a fine-tuning file holds chat prompts).",
                    param="file",
                    code="invalid_jsonl",
                )
