"""The contract every offline store keeps: files, batches and their lines, fine-tuning jobs and their
events, wherever they are kept. The API layer and the workers see only ``OfflineStore``;
``SqliteOfflineStore`` (sqlite.py) keeps everything on one gateway's disk, ``RedisOfflineStore``
(redis.py) in a Redis that gateway replicas share.

What is the same in every store is done here once: a new record's id, times and defaults, the
``<status>_at`` stamp a batch's move sets, the encoding of a job's fields and events, the reading of
an event cursor. A store implements the rest: where records are written, read, paged and claimed.

Lines are *claimed* by a worker before it answers them: a claimed line is not handed to another
worker while its claim lives, and a line is recorded once, by whichever worker finishes it first.

Lists take ``project``: a string lists that project's records only (``after`` then pages within them,
and an ``after`` outside them counts as unknown: the list starts at its beginning); None lists all.
The counts the limits on new offline work ask (``project_bytes``, ``active_batch_count``,
``active_job_count``; the rules are service/serving's) take ``project`` as well, where None counts
the records of no project (those created without keys), not every project's.
Stores record no metrics: what a caller may count comes back to it (``BatchLine.taken_over``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.jobs.records import (
    BATCH_TIMES,
    FINAL_BATCH_STATUSES,
    BatchLine,
    BatchRecord,
    FileRecord,
    FineTuningEvent,
    FineTuningJob,
    encoded,
    event_seq,
    is_record_id,
    new_batch_id,
    new_file_id,
    new_job_id,
    now,
    status_move,
)

__all__ = ["OfflineStore"]


class OfflineStore(abc.ABC):
    """Files, batches and fine-tuning jobs, wherever they are kept. Every method is a coroutine;
    one that cannot reach its state raises ``StateUnavailableError`` (503)."""

    # Renew claims this often (seconds), or None where a claim lives as long as its process.
    claim_renewal_s: float | None = None
    # Where this gateway's fine-tuning jobs work (<tuning_dir>/<job id>/: teacher answers, adapter),
    # or None: the store was given no directory, and the fine-tuning worker cannot run on it.
    tuning_dir: Path | None = None

    async def check(self) -> None:
        """Refuse, at start-up, a store that cannot keep what it is given (nothing to check here)."""
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- files ---------------------------------------------------------------------------------

    async def add_file(
        self,
        content: bytes,
        *,
        filename: str,
        purpose: str,
        file_id: str | None = None,
        project: str | None = None,
        expires_at: int | None = None,
    ) -> FileRecord:
        """Store a file (``file_id``: replace the file of that id, as a batch's output written
        again), owned by ``project``, to be deleted after ``expires_at`` when given."""
        if file_id is not None and not is_record_id(file_id):
            raise ValueError(f"{file_id!r} cannot be a file id")
        record = FileRecord(
            id=file_id or new_file_id(),
            bytes=len(content),
            created_at=now(),
            filename=filename,
            purpose=purpose,
            status="processed",
            project=project,
            expires_at=expires_at,
        )
        await self._put_file(record, content)
        return record

    @abc.abstractmethod
    async def _put_file(self, record: FileRecord, content: bytes) -> None:
        """Write a file: its bytes, then its record (a record never names missing bytes)."""

    @abc.abstractmethod
    async def get_file(self, file_id: str) -> FileRecord | None: ...

    @abc.abstractmethod
    async def list_files(
        self,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        ascending: bool,
        project: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        """One page of files by creation order, and whether more follow."""

    @abc.abstractmethod
    async def read_content(self, file_id: str) -> bytes: ...

    @abc.abstractmethod
    async def delete_file(self, file_id: str) -> bool:
        """Delete a file and its bytes; whether it was there."""

    @abc.abstractmethod
    async def expired_files(self, now: int, limit: int) -> list[FileRecord]:
        """Up to ``limit`` files whose ``expires_at`` is ``now`` or earlier, soonest expired first."""

    @abc.abstractmethod
    async def project_bytes(self, project: str | None) -> int:
        """The bytes of ``project``'s files (None: of the files that belong to no project), batch
        outputs and fine-tuning results among them; files already expired are not counted (the
        sweeper deletes them)."""

    # --- batches -------------------------------------------------------------------------------

    async def add_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        window_s: int,
        metadata: dict[str, str] | None,
        project: str | None = None,
        key_name: str | None = None,
    ) -> BatchRecord:
        """A new batch, validating, owned by ``project`` and charged to the key ``key_name``, to
        expire ``window_s`` from now."""
        created = now()
        record = BatchRecord(
            id=new_batch_id(),
            status="validating",
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            created_at=created,
            metadata=metadata,
            times={name: None for name in BATCH_TIMES} | {"expires_at": created + window_s},
            project=project,
            key_name=key_name,
        )
        await self._put_batch(record)
        return record

    @abc.abstractmethod
    async def _put_batch(self, record: BatchRecord) -> None: ...

    @abc.abstractmethod
    async def get_batch(self, batch_id: str) -> BatchRecord | None: ...

    @abc.abstractmethod
    async def list_batches(
        self, *, limit: int, after: str | None, project: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        """Newest first, as OpenAI lists them, and whether more follow."""

    @abc.abstractmethod
    async def active_batches(self) -> list[BatchRecord]:
        """Batches not yet final, oldest first (every project's)."""

    @abc.abstractmethod
    async def active_batch_count(self, project: str | None) -> int:
        """How many of ``project``'s batches (None: of the batches of no project) are not final."""

    async def set_status(
        self, batch_id: str, status: str, *, only_from: Sequence[str] | None = None, **fields: Any
    ) -> BatchRecord | None:
        """Move a batch to ``status`` (stamping ``<status>_at``) and set ``fields``, only from one
        of ``only_from`` when given: the batch afterwards, or None when this call did not move it.
        A batch moved to a final status leaves the worker's queue."""
        values = status_move(status, fields)
        final = status in FINAL_BATCH_STATUSES
        return await self._move_batch(batch_id, values, only_from=only_from or (), final=final)

    @abc.abstractmethod
    async def _move_batch(
        self, batch_id: str, values: dict[str, Any], *, only_from: Sequence[str], final: bool
    ) -> BatchRecord | None:
        """Set the (encoded) ``values``, ``status`` among them, while the batch's status is one of
        ``only_from`` (any when empty): the batch afterwards, or None when nothing moved."""

    @abc.abstractmethod
    async def start_batch(self, batch_id: str, lines: Sequence[BatchLine]) -> BatchRecord | None:
        """validating -> in_progress with every line stored unclaimed (once): the batch, or None
        when another call started it (or it is no longer validating)."""

    # --- batch lines ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim_lines(self, batch_id: str, count: int) -> list[BatchLine]:
        """Up to ``count`` unanswered lines no live claim holds, now claimed by this store; a line
        whose claim went stale (its worker died) comes back with ``taken_over`` set."""

    async def keep_claims(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        """Renew the claims on lines still being worked on (here a claim never goes stale)."""
        return None

    @abc.abstractmethod
    async def release_lines(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        """Give up claims on lines this worker will not answer (another may take them at once)."""

    @abc.abstractmethod
    async def finish_line(
        self, batch_id: str, line: BatchLine, *, ok: bool, result: dict[str, Any]
    ) -> bool:
        """Record a line's result, while the batch is in progress, and end its claim; whether this
        call recorded it (False: the line was already answered, or the batch cancelled)."""

    @abc.abstractmethod
    async def pending_lines(self, batch_id: str) -> list[BatchLine]:
        """Lines without a result, whoever claims them, in input order."""

    @abc.abstractmethod
    async def results(self, batch_id: str) -> list[tuple[bool, dict[str, Any]]]:
        """Each answered line's (ok, output line), in input order."""

    # --- fine-tuning jobs ----------------------------------------------------------------------

    async def add_job(
        self,
        *,
        model: str,
        training_file: str,
        suffix: str | None,
        seed: int,
        hyperparameters: dict[str, Any],
        metadata: dict[str, str] | None,
        project: str | None = None,
        key_name: str | None = None,
    ) -> FineTuningJob:
        """A new job, validating its files, owned by ``project`` and charged to the key
        ``key_name``."""
        job = FineTuningJob(
            id=new_job_id(),
            status="validating_files",
            model=model,
            training_file=training_file,
            suffix=suffix,
            seed=seed,
            hyperparameters=hyperparameters,
            created_at=now(),
            metadata=metadata,
            project=project,
            key_name=key_name,
        )
        await self._put_job(job)
        return job

    @abc.abstractmethod
    async def _put_job(self, job: FineTuningJob) -> None: ...

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> FineTuningJob | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self, *, limit: int, after: str | None, project: str | None = None
    ) -> tuple[list[FineTuningJob], bool]:
        """Newest first, as OpenAI lists them, and whether more follow."""

    @abc.abstractmethod
    async def jobs_with_status(self, statuses: Sequence[str]) -> list[FineTuningJob]:
        """Jobs in one of ``statuses``, oldest first (every project's)."""

    @abc.abstractmethod
    async def active_job_count(self, project: str | None) -> int:
        """How many of ``project``'s fine-tuning jobs (None: of the jobs of no project) are not
        final."""

    async def update(
        self, job_id: str, *, only_from: Sequence[str] | None = None, **fields: Any
    ) -> FineTuningJob | None:
        """Set ``fields`` of a job (only while its status is one of ``only_from``, when given); the
        job as it is afterwards (None: no such job)."""
        values = {name: encoded(value) for name, value in fields.items()}
        return await self._update_job(job_id, values, only_from=only_from or ())

    @abc.abstractmethod
    async def _update_job(
        self, job_id: str, values: dict[str, Any], *, only_from: Sequence[str]
    ) -> FineTuningJob | None: ...

    async def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Append an event to a job's events."""
        values = {
            "job_id": job_id,
            "created_at": now(),
            "level": level,
            "message": message,
            "type": type,
            "data": encoded(data),
        }
        await self._put_event(values)

    @abc.abstractmethod
    async def _put_event(self, values: dict[str, Any]) -> None:
        """Write an event's (encoded) columns, numbered after every event before it."""

    async def list_events(
        self, job_id: str, *, limit: int, after: str | None
    ) -> tuple[list[FineTuningEvent], bool]:
        """Newest first; ``after``: an event id, to page on to older ones."""
        return await self._events_before(job_id, event_seq(after), limit)

    @abc.abstractmethod
    async def _events_before(
        self, job_id: str, before: int | None, limit: int
    ) -> tuple[list[FineTuningEvent], bool]:
        """Up to ``limit`` of a job's events numbered below ``before`` (all when None), newest
        first, and whether more follow."""
