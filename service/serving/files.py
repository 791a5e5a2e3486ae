"""The files resource: uploads, listing, content and deletion, each file its project's own.

The one place that answers "this file exists for this caller and was uploaded for purpose X"
(batches and fine-tuning jobs ask it too). An upload is checked off the event loop: parsing a large
JSONL file would otherwise stall every other request.

What a project may upload, checked before the upload is parsed or stored (cheapest first):

    uploads_per_minute            a moving window per project, in this replica's memory (``limits``):
                                  N replicas admit up to N times it; over it, 429 with retry-after
    files_max_bytes_per_project   the bytes of the project's files (not expired; batch outputs and
                                  fine-tuning results count, though the workers that write those are
                                  never refused) plus this upload; over it, 400 storage_limit_exceeded

Without keys every caller is the one project None: its files count together, its uploads share one
window. Uploads this replica is still storing count toward their project's bytes, so concurrent
uploads cannot pass the limit together here; across replicas they can, by what they upload at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from service.config import Settings
from service.errors import InvalidRequestError, RateLimitedError, ResourceNotFoundError
from service.jobs import FileRecord, OfflineStore, check_upload, now
from service.serving.caller import Caller, whose
from service.serving.pages import list_page
from service.serving.protocol import ExpiresAfter

__all__ = ["FilesServing"]


class FilesServing:
    def __init__(self, store: OfflineStore, settings: Settings):
        self.store = store
        self.settings = settings
        self._uploads = MovingWindowRateLimiter(MemoryStorage())
        # Bytes of the uploads this replica is checking and storing now, by project.
        self._storing: dict[str | None, int] = {}

    async def create(
        self,
        content: bytes,
        *,
        filename: str,
        purpose: str,
        caller: Caller,
        expires_after: ExpiresAfter | None = None,
    ) -> dict[str, Any]:
        """Store an upload once it passed its checks; it expires as asked, else after the default
        retention (files_retention_s; 0 keeps it until deleted). Refused over the project's
        uploads per minute (429) or storage (400), before anything else is done."""
        project = caller.project
        await self._admit_upload(project)
        await self._reserve_storage(project, len(content))
        try:
            await asyncio.to_thread(
                check_upload,
                content,
                purpose,
                max_bytes=self.settings.files_max_bytes,
                max_lines=self.settings.files_max_lines,
            )
            lifetime = expires_after.seconds if expires_after else self.settings.files_retention_s
            record = await self.store.add_file(
                content,
                filename=filename,
                purpose=purpose,
                project=project,
                expires_at=now() + lifetime if lifetime else None,
            )
        finally:
            self._release_storage(project, len(content))
        return record.to_json()

    async def _admit_upload(self, project: str | None) -> None:
        """Count one upload in the project's window; 429 when the window is full."""
        limit = self.settings.uploads_per_minute
        if not limit:
            return
        item = RateLimitItemPerMinute(limit, namespace="powerserve/uploads")
        identity = "no-project" if project is None else f"project:{project}"
        if await self._uploads.hit(item, identity):
            return
        stats = await self._uploads.get_window_stats(item, identity)
        wait = max(1.0, stats.reset_time - time.time())
        raise RateLimitedError(
            f"Rate limit reached on file uploads for {whose(project)}: limit {limit} per minute. "
            f"Please try again in {wait:.0f}s.",
            kind="requests",
            retry_after=wait,
        )

    async def _reserve_storage(self, project: str | None, size: int) -> None:
        """Count ``size`` bytes toward the project's storage while the upload is stored (give
        them back with ``_release_storage``); 400 when they would take it over its limit."""
        limit = self.settings.files_max_bytes_per_project
        if limit:
            stored = await self.store.project_bytes(project)
            used = stored + self._storing.get(project, 0)  # read after the await: no gap
            if used + size > limit:
                raise InvalidRequestError(
                    f"Storage limit reached for {whose(project)}: its files take {_size(used)} of "
                    f"its {_size(limit)}, and this file of {_size(size)} would exceed it. Delete "
                    "files it no longer needs (DELETE /v1/files/{file_id}); files uploaded with "
                    "expires_after are freed when they expire.",
                    param="file",
                    code="storage_limit_exceeded",
                )
        self._storing[project] = self._storing.get(project, 0) + size

    def _release_storage(self, project: str | None, size: int) -> None:
        left = self._storing.get(project, 0) - size
        if left > 0:
            self._storing[project] = left
        else:
            self._storing.pop(project, None)

    async def list(
        self,
        caller: Caller,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        ascending: bool,
    ) -> dict[str, Any]:
        files, more = await self.store.list_files(
            purpose=purpose, limit=limit, after=after, ascending=ascending, project=caller.scope
        )
        return list_page([f.to_json() for f in files if not _expired(f)], more)

    async def retrieve(self, file_id: str, caller: Caller) -> dict[str, Any]:
        return (await self.owned(file_id, caller)).to_json()

    async def content(self, file_id: str, caller: Caller) -> bytes:
        await self.owned(file_id, caller)
        try:
            return await self.store.read_content(file_id)
        except FileNotFoundError as exc:
            raise InvalidRequestError(f"The content of {file_id} is gone.", param="file_id") from exc

    async def delete(self, file_id: str, caller: Caller) -> dict[str, Any]:
        await self.owned(file_id, caller)
        await self.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def owned(
        self, file_id: str, caller: Caller, *, purpose: str | None = None, param: str = "file_id"
    ) -> FileRecord:
        """The file, if it exists for this caller (another project's is not found) and, when
        ``purpose`` is given, was uploaded for it."""
        record = await self.store.get_file(file_id)
        if record is None or not caller.sees(record.project) or _expired(record):
            raise ResourceNotFoundError("file", file_id, param=param)
        if purpose is not None and record.purpose != purpose:
            raise InvalidRequestError(
                f"File {record.id} was uploaded for {record.purpose!r}, not {purpose!r}.", param=param
            )
        return record


def _expired(record: FileRecord) -> bool:
    """Past its expiry: gone for every caller, whenever the sweeper deletes it."""
    return record.expires_at is not None and record.expires_at <= now()


def _size(count: int) -> str:
    """Bytes for a message: 1536 -> "1.5 KiB (1536 bytes)"."""
    value, unit = float(count), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{count} bytes" if unit == "bytes" else f"{value:.3g} {unit} ({count} bytes)"
