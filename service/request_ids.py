"""The id of the HTTP request being served: on its response (``x-request-id``), in its error
bodies and in every log line written while serving it.

A client's own ``x-request-id`` is kept when it is a sensible token, so that a caller's and the
server's logs can be joined; otherwise the server makes one. The id lives in a context variable, so
every task the request starts (a stream, an SMC particle) logs it too.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RequestIdFilter", "current_request_id", "request_id_for", "request_id_scope"]

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# What a client's id may look like: short, and safe to echo in a header and a log line.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


def request_id_for(client_id: str | None = None) -> str:
    """The client's id when it is a sensible token, else a fresh one."""
    if client_id is not None and _CLIENT_ID.match(client_id):
        return client_id
    return f"req_{uuid.uuid4().hex}"


@contextmanager
def request_id_scope(request_id: str) -> Iterator[None]:
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts the request's id on each log record (``%(request_id)s``; "-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get() or "-"
        return True
