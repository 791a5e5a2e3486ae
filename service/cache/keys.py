"""Cache keys: a hash of everything that determines an answer, and nothing else."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["cache_key"]

# Bump when the cached value's layout changes, so old entries are never misread.
_LAYOUT = 2


def cache_key(*, route: str, revision: str, fields: dict[str, Any], partition: str | None = None) -> str:
    """``powerserve:v2:<sha256>`` of the route, the model's revision (weights and adapter), every
    output-affecting request field (prompt token ids, sampling and power parameters) and the
    partition (a project's; None: shared by all). Not covered: stream, stream_options, user, request
    ids (they change how an answer travels, not what it is)."""
    scope = {} if partition is None else {"partition": partition}  # shared keys stay as they were
    canonical = json.dumps(
        {"layout": _LAYOUT, "route": route, "revision": revision, "request": fields} | scope,
        sort_keys=True,
        separators=(",", ":"),
        default=list,
    )
    return f"powerserve:v{_LAYOUT}:{hashlib.sha256(canonical.encode()).hexdigest()}"
