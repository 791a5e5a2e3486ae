"""One page of an OpenAI list endpoint (files, batches, fine-tuning jobs)."""

from __future__ import annotations

from typing import Any

__all__ = ["list_page"]


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
