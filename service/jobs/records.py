"""The records the offline stores keep, whichever store keeps them, and the pure steps every store
takes with them: new ids, the columns a record is written as and read back from, the stamp a status
move sets.

    FileRecord        an uploaded file, or one the service wrote (a batch's output, a job's result)
    BatchRecord       a batch: its status, ``<status>_at`` times, request counts, output files
    BatchLine         one request of a batch, as a worker claims it
    FineTuningJob     a fine-tuning job: status, hyperparameters, the model it made
    FineTuningEvent   what a job reported as it ran

Files, batches and jobs belong to a ``project``: the project of the API key that created them (None
when the gateway runs without keys). It is stored, filtered on, and never shown in ``to_json()``;
nor is a batch's or job's ``key_name``, the key its work is charged to.

A store writes a record as a plain dict of column values (``*_columns``: structures JSON-encoded,
absent values None) and builds it again from one (``*_from_row``), whether the dict is a SQLite row
(typed values, None) or a Redis hash (strings, "" for none).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACTIVE_BATCH_STATUSES",
    "ACTIVE_TUNING_STATUSES",
    "BATCH_TIMES",
    "FINAL_BATCH_STATUSES",
    "FINAL_TUNING_STATUSES",
    "BatchLine",
    "BatchRecord",
    "FileRecord",
    "FineTuningEvent",
    "FineTuningJob",
    "batch_columns",
    "batch_from_row",
    "derived_file_id",
    "encoded",
    "event_from_row",
    "event_seq",
    "file_columns",
    "file_from_row",
    "is_record_id",
    "job_columns",
    "job_from_row",
    "line_from_row",
    "new_batch_id",
    "new_file_id",
    "new_job_id",
    "now",
    "status_move",
]

# Batches the worker still has to act on, and those that are over.
ACTIVE_BATCH_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
FINAL_BATCH_STATUSES = ("completed", "failed", "cancelled", "expired")

# Fine-tuning jobs the worker still has to act on, and those that are over.
ACTIVE_TUNING_STATUSES = ("validating_files", "queued", "running")
FINAL_TUNING_STATUSES = ("succeeded", "failed", "cancelled")

_RECORD_ID = re.compile(r"[A-Za-z0-9_-]+")

# A batch's times: its deadline, then the stamp of each status it can move to.
BATCH_TIMES = (
    "expires_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def now() -> int:
    return int(time.time())


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def new_job_id() -> str:
    return f"ftjob-{uuid.uuid4().hex[:24]}"


def derived_file_id(owner: str, role: str) -> str:
    """A file id fixed by its owner and role (a batch's output): writing it twice is idempotent."""
    return "file-" + hashlib.blake2b(f"{owner}/{role}".encode(), digest_size=16).hexdigest()


def is_record_id(record_id: str) -> bool:
    """Whether ``record_id`` can name a record. Ids the stores make are letters, digits, ``-`` and
    ``_``; anything else (``abc:content``, a path) names nothing, whatever a store's keys or file
    names look like."""
    return _RECORD_ID.fullmatch(record_id) is not None


@dataclass(frozen=True)
class FileRecord:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    project: str | None = None  # the owner; not shown
    expires_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "expires_at": self.expires_at,
            "status_details": None,
        }


@dataclass(frozen=True)
class BatchRecord:
    id: str
    status: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    metadata: dict[str, str] | None = None
    times: dict[str, int | None] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    project: str | None = None  # the owner; not shown
    key_name: str | None = None  # the API key that created it (its work is charged to it)

    @property
    def expires_at(self) -> int | None:
        return self.times.get("expires_at")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "created_at": self.created_at,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": None if not self.errors else {"object": "list", "data": self.errors},
            "metadata": self.metadata,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
        } | {name: self.times.get(name) for name in BATCH_TIMES}


@dataclass(frozen=True)
class BatchLine:
    idx: int
    custom_id: str
    body: dict[str, Any]
    claim: str = ""  # the store's handle on this worker's claim of the line (a Redis stream entry)
    taken_over: bool = False  # claimed from another worker whose claim went stale


@dataclass(frozen=True)
class FineTuningJob:
    id: str
    status: str
    model: str
    training_file: str
    suffix: str | None
    seed: int
    hyperparameters: dict[str, Any]
    created_at: int
    metadata: dict[str, str] | None = None
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    adapter_dir: str | None = None
    result_files: tuple[str, ...] = ()
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    project: str | None = None  # the owner; not shown
    key_name: str | None = None  # the API key that created it (its work is charged to it)

    @property
    def final(self) -> bool:
        return self.status not in ACTIVE_TUNING_STATUSES

    def to_json(self) -> dict[str, Any]:
        """OpenAI's ``fine_tuning.job`` object (the power teacher's settings among the
        hyperparameters)."""
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "model": self.model,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": "powerserve",
            "result_files": list(self.result_files),
            "status": self.status,
            "training_file": self.training_file,
            "validation_file": None,
            "hyperparameters": self.hyperparameters,
            "trained_tokens": self.trained_tokens,
            "error": self.error,
            "seed": self.seed,
            "user_provided_suffix": self.suffix,
            "estimated_finish": None,
            "integrations": None,
            "metadata": self.metadata,
            "method": {"type": "supervised"},
        }


@dataclass(frozen=True)
class FineTuningEvent:
    seq: int
    job_id: str
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": f"ftevent-{self.seq}",
            "object": "fine_tuning.job.event",
            "created_at": self.created_at,
            "level": self.level,
            "message": self.message,
            "type": self.type,
            "data": self.data,
        }


def event_seq(event_id: str | None) -> int | None:
    """The position an event id (``ftevent-<seq>``) names, or None for no (or no such) id."""
    if event_id is None or not event_id.startswith("ftevent-"):
        return None
    seq = event_id.removeprefix("ftevent-")
    return int(seq) if seq.isdigit() else None


# --- writing: a status move, and records as columns -----------------------------------------------


def encoded(value: Any) -> Any:
    """A value as a column holds it: structures as JSON, the rest as they are."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return value


def status_move(status: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a batch's move to ``status`` sets: the status, ``fields``, and the move's
    ``<status>_at`` stamp (now, unless ``fields`` gives it); structures JSON-encoded."""
    values = {"status": status, **fields}
    stamp = f"{status}_at"
    if stamp in BATCH_TIMES:
        values.setdefault(stamp, now())
    return {name: encoded(value) for name, value in values.items()}


def file_columns(file: FileRecord) -> dict[str, Any]:
    return {
        "id": file.id,
        "bytes": file.bytes,
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": file.status,
        "project": file.project,
        "expires_at": file.expires_at,
    }


def batch_columns(batch: BatchRecord) -> dict[str, Any]:
    return {
        "id": batch.id,
        "status": batch.status,
        "input_file_id": batch.input_file_id,
        "endpoint": batch.endpoint,
        "completion_window": batch.completion_window,
        "metadata": encoded(batch.metadata),
        "created_at": batch.created_at,
        **{name: batch.times.get(name) for name in BATCH_TIMES},
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "errors": encoded(batch.errors),
        "total": batch.total,
        "completed": batch.completed,
        "failed": batch.failed,
        "project": batch.project,
        "key_name": batch.key_name,
    }


def job_columns(job: FineTuningJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "model": job.model,
        "training_file": job.training_file,
        "suffix": job.suffix,
        "seed": job.seed,
        "hyperparameters": encoded(job.hyperparameters),
        "metadata": encoded(job.metadata),
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "fine_tuned_model": job.fine_tuned_model,
        "adapter_dir": job.adapter_dir,
        "result_files": encoded(job.result_files),
        "trained_tokens": job.trained_tokens,
        "error": encoded(job.error),
        "project": job.project,
        "key_name": job.key_name,
    }


# --- reading: a record from its columns (a SQLite row or a Redis hash) ---------------------------


def _text(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    return None if value is None or value == "" else str(value)


def _number(row: Mapping[str, Any], name: str) -> int | None:
    value = row.get(name)
    return None if value is None or value == "" else int(value)


def _json(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    return json.loads(value) if value else None


def file_from_row(row: Mapping[str, Any]) -> FileRecord:
    return FileRecord(
        id=str(row["id"]),
        bytes=int(row["bytes"]),
        created_at=int(row["created_at"]),
        filename=str(row["filename"]),
        purpose=str(row["purpose"]),
        status=str(row["status"]),
        project=_text(row, "project"),
        expires_at=_number(row, "expires_at"),
    )


def batch_from_row(row: Mapping[str, Any]) -> BatchRecord:
    return BatchRecord(
        id=str(row["id"]),
        status=str(row["status"]),
        input_file_id=str(row["input_file_id"]),
        endpoint=str(row["endpoint"]),
        completion_window=str(row["completion_window"]),
        created_at=int(row["created_at"]),
        metadata=_json(row, "metadata"),
        times={name: _number(row, name) for name in BATCH_TIMES},
        output_file_id=_text(row, "output_file_id"),
        error_file_id=_text(row, "error_file_id"),
        errors=_json(row, "errors"),
        total=_number(row, "total") or 0,
        completed=_number(row, "completed") or 0,
        failed=_number(row, "failed") or 0,
        project=_text(row, "project"),
        key_name=_text(row, "key_name"),
    )


def line_from_row(row: Mapping[str, Any], *, claim: str = "", taken_over: bool = False) -> BatchLine:
    return BatchLine(int(row["idx"]), str(row["custom_id"]), json.loads(row["body"]), claim, taken_over)


def job_from_row(row: Mapping[str, Any]) -> FineTuningJob:
    return FineTuningJob(
        id=str(row["id"]),
        status=str(row["status"]),
        model=str(row["model"]),
        training_file=str(row["training_file"]),
        suffix=_text(row, "suffix"),
        seed=int(row["seed"]),
        hyperparameters=json.loads(row["hyperparameters"]),
        created_at=int(row["created_at"]),
        metadata=_json(row, "metadata"),
        finished_at=_number(row, "finished_at"),
        fine_tuned_model=_text(row, "fine_tuned_model"),
        adapter_dir=_text(row, "adapter_dir"),
        result_files=tuple(_json(row, "result_files") or ()),
        trained_tokens=_number(row, "trained_tokens"),
        error=_json(row, "error"),
        project=_text(row, "project"),
        key_name=_text(row, "key_name"),
    )


def event_from_row(row: Mapping[str, Any]) -> FineTuningEvent:
    return FineTuningEvent(
        seq=int(row["seq"]),
        job_id=str(row["job_id"]),
        created_at=int(row["created_at"]),
        level=str(row["level"]),
        message=str(row["message"]),
        type=str(row["type"]),
        data=_json(row, "data"),
    )
