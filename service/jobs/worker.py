"""The background task behind the batch and fine-tuning workers: passes over the durable work,
one after another while there is something to do, and a wait between them when there was not (cut
short by ``wake``). A pass that fails is logged and retried a second later: the work is on disk or
in Redis, so nothing is lost with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = ["BackgroundWorker"]

logger = logging.getLogger(__name__)

# How long ``close`` waits for the loop to end before cancelling it again.
_CANCEL_AGAIN_S = 0.5


class BackgroundWorker:
    """Subclasses say what one pass does (``_pass``: whether it did anything)."""

    def __init__(self, name: str, *, idle_s: float):
        self.name = name
        self.idle_s = idle_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name.replace(" ", "-"))

    def wake(self) -> None:
        """New work, or a cancel: look now rather than at the end of the wait."""
        self._wake.set()

    async def close(self) -> None:
        """Stop the loop, cancelling it again until it ends: on Python 3.11 a cancel can be lost
        (``asyncio.wait_for``, with which redis-py sends a command, returns the command's result
        when it completes as the cancel arrives), and the loop would go on forever."""
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=_CANCEL_AGAIN_S)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _pass(self) -> bool:
        raise NotImplementedError

    async def _loop(self) -> None:
        while True:
            try:
                if not await self._pass():
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self.idle_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the %s failed; retrying", self.name)
                await asyncio.sleep(1.0)
