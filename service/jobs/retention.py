"""Retention: files past their ``expires_at`` are deleted, so a state directory (or a jobs Redis)
does not grow forever. Until the sweep reaches an expired file it is already gone for every caller
(the serving layer treats it as not found)."""

from __future__ import annotations

import logging

from service.jobs.records import now
from service.jobs.stores import OfflineStore
from service.jobs.worker import BackgroundWorker

__all__ = ["RetentionWorker"]

logger = logging.getLogger(__name__)


class RetentionWorker(BackgroundWorker):
    """Deletes expired files, ``batch_size`` at a time, looking again every ``interval_s``."""

    def __init__(self, store: OfflineStore, *, interval_s: float = 60.0, batch_size: int = 100):
        super().__init__("retention worker", idle_s=interval_s)
        self.store = store
        self.batch_size = batch_size

    async def _pass(self) -> bool:
        expired = await self.store.expired_files(now(), self.batch_size)
        for file in expired:
            await self.store.delete_file(file.id)
        if expired:
            logger.info("deleted %d expired file(s)", len(expired))
        return len(expired) == self.batch_size  # a full page: more may be waiting
