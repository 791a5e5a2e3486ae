"""Graceful shutdown: SIGTERM drains the server before uvicorn stops it.

uvicorn on its own stops listening at the first SIGTERM, so a request that is still routed to a
terminating pod (Kubernetes removes it from its Service a few seconds later) finds the port closed.
Here the first SIGTERM (or Ctrl-C) starts a drain instead (service/api/guards.py's ``Drain``): the
server keeps listening, /health answers 503 so that load balancers take it out, new requests get 503
+ Retry-After, and requests in flight (streams to their last byte) get up to drain-timeout-s to
finish. Then uvicorn's own shutdown runs (``timeout_graceful_shutdown`` for what is left, the app's
lifespan closes the engine) and the process ends by the signal it got. A second signal stops at once.
"""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from service.api.guards import Drain

__all__ = ["DrainingServer"]


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)  # a second signal: uvicorn's (and sse-starlette's) own
            return
        # Re-raised once uvicorn is done, so the process ends the way the signal asks.
        self._captured_signals.append(sig)
        self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        if self.drain.finished:
            self.should_exit = True
        return await super().on_tick(counter)
