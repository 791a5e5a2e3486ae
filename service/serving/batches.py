"""The batches resource: create, list, retrieve, cancel — each batch its project's own.

A batch's lines are answered by the batch worker (service/jobs/batches.py) through the same
completion serving objects as HTTP requests (``CompletionsServing.answer_line``, named in
``endpoints``), charged to the key that created the batch.

A project may have ``batches_max_active_per_project`` batches not yet final (without keys, all
callers are one project); one more is refused with 429 ``too_many_active``. Counted and created
under one lock, so concurrent creates cannot pass the limit together on this replica (across
replicas they can, by one each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from service.errors import InvalidRequestError, ResourceNotFoundError, TooManyActiveError
from service.jobs import COMPLETION_WINDOWS, BatchRecord, OfflineStore
from service.serving.caller import Caller, whose
from service.serving.completions import CompletionsServing
from service.serving.files import FilesServing
from service.serving.pages import list_page
from service.serving.protocol import BatchCreateRequest

__all__ = ["BatchesServing"]

# Where a batch can still be cancelled from.
_CANCELLABLE = ("validating", "in_progress")


class BatchesServing:
    def __init__(self, store: OfflineStore, files: FilesServing, *, wake: Callable[[], None]):
        self.store = store
        self.files = files
        self.wake = wake  # the batch worker: new work, or a cancel
        # The completion endpoints a batch line may name, once the engine is up.
        self.endpoints: Mapping[str, CompletionsServing[Any]] = {}
        self._creating = asyncio.Lock()  # a project's count and its new batch, together

    async def create(self, body: BatchCreateRequest, caller: Caller) -> dict[str, Any]:
        await self.files.owned(body.input_file_id, caller, purpose="batch", param="input_file_id")
        limit = self.files.settings.batches_max_active_per_project
        async with self._creating:
            if limit:
                active = await self.store.active_batch_count(caller.project)
                if active >= limit:
                    raise TooManyActiveError(
                        f"Too many active batches for {whose(caller.project)}: {active} not yet "
                        f"finished, and the limit is {limit}. Try again once one has finished, or "
                        "cancel one (POST /v1/batches/{batch_id}/cancel)."
                    )
            batch = await self.store.add_batch(
                input_file_id=body.input_file_id,
                endpoint=body.endpoint,
                completion_window=body.completion_window,
                window_s=COMPLETION_WINDOWS[body.completion_window],
                metadata=body.metadata,
                project=caller.project,
                key_name=caller.key_name,
            )
        self.wake()
        return batch.to_json()

    async def list(self, caller: Caller, *, limit: int, after: str | None) -> dict[str, Any]:
        batches, more = await self.store.list_batches(limit=limit, after=after, project=caller.scope)
        return list_page([b.to_json() for b in batches], more)

    async def retrieve(self, batch_id: str, caller: Caller) -> dict[str, Any]:
        return (await self._owned(batch_id, caller)).to_json()

    async def cancel(self, batch_id: str, caller: Caller) -> dict[str, Any]:
        batch = await self._owned(batch_id, caller)
        if batch.status in _CANCELLABLE:
            cancelled = await self.store.set_status(batch_id, "cancelling", only_from=_CANCELLABLE)
            batch = cancelled or await self._owned(batch_id, caller)  # moved meanwhile: as it is now
            self.wake()
        elif batch.status not in ("cancelling", "cancelled"):
            raise InvalidRequestError(
                f"Batch {batch_id} is {batch.status}; only a running batch can be cancelled.",
                param="batch_id",
            )
        return batch.to_json()

    async def _owned(self, batch_id: str, caller: Caller) -> BatchRecord:
        batch = await self.store.get_batch(batch_id)
        if batch is None or not caller.sees(batch.project):
            raise ResourceNotFoundError("batch", batch_id, param="batch_id")
        return batch
