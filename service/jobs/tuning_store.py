"""Durable state of fine-tuning jobs and their events, in the job store's SQLite database.

fine_tuning_jobs     one row per job: status, hyperparameters, result, the model it made
fine_tuning_events   what a job reported as it ran (stages, answers, loss, evaluation), in order
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.jobs.store import JobStore, now, update_statement

__all__ = ["ACTIVE_TUNING_STATUSES", "FineTuningEvent", "FineTuningJob", "FineTuningStore"]

# Jobs the worker still has to act on; succeeded, failed and cancelled are final.
ACTIVE_TUNING_STATUSES = ("validating_files", "queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fine_tuning_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    suffix TEXT,
    seed INTEGER NOT NULL,
    hyperparameters TEXT NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    fine_tuned_model TEXT,
    adapter_dir TEXT,
    result_files TEXT NOT NULL DEFAULT '[]',
    trained_tokens INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS fine_tuning_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS fine_tuning_events_job ON fine_tuning_events (job_id, seq);
"""


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


def _job(row: sqlite3.Row) -> FineTuningJob:
    return FineTuningJob(
        id=row["id"],
        status=row["status"],
        model=row["model"],
        training_file=row["training_file"],
        suffix=row["suffix"],
        seed=row["seed"],
        hyperparameters=json.loads(row["hyperparameters"]),
        created_at=row["created_at"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        finished_at=row["finished_at"],
        fine_tuned_model=row["fine_tuned_model"],
        adapter_dir=row["adapter_dir"],
        result_files=tuple(json.loads(row["result_files"])),
        trained_tokens=row["trained_tokens"],
        error=json.loads(row["error"]) if row["error"] else None,
    )


def _event(row: sqlite3.Row) -> FineTuningEvent:
    return FineTuningEvent(
        row["seq"],
        row["job_id"],
        row["created_at"],
        row["level"],
        row["message"],
        row["type"],
        json.loads(row["data"]) if row["data"] else None,
    )


class FineTuningStore:
    """Fine-tuning jobs beside the files and batches of ``store`` (one database)."""

    def __init__(self, store: JobStore):
        self.store = store
        self.root = store.root / "fine_tuning"  # each job's work directory: <root>/<job id>/
        self.root.mkdir(parents=True, exist_ok=True)
        store.run_script(_SCHEMA)

    async def add_job(
        self,
        *,
        model: str,
        training_file: str,
        suffix: str | None,
        seed: int,
        hyperparameters: dict[str, Any],
        metadata: dict[str, str] | None,
    ) -> FineTuningJob:
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"

        def write(db: sqlite3.Connection) -> FineTuningJob:
            db.execute(
                "INSERT INTO fine_tuning_jobs (id, status, model, training_file, suffix, seed, "
                "hyperparameters, metadata, created_at) VALUES (?, 'validating_files', ?, ?, ?, ?, "
                "?, ?, ?)",
                (
                    job_id,
                    model,
                    training_file,
                    suffix,
                    seed,
                    json.dumps(hyperparameters),
                    json.dumps(metadata) if metadata is not None else None,
                    now(),
                ),
            )
            return self._get(db, job_id)  # type: ignore[return-value]

        return await self.store.run(write)

    def _get(self, db: sqlite3.Connection, job_id: str) -> FineTuningJob | None:
        row = db.execute("SELECT * FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    async def get_job(self, job_id: str) -> FineTuningJob | None:
        return await self.store.run(lambda db: self._get(db, job_id))

    async def list_jobs(self, *, limit: int, after: str | None) -> tuple[list[FineTuningJob], bool]:
        """Newest first, as OpenAI lists them."""
        return await self.store.run(
            lambda db: self.store.page(db, "fine_tuning_jobs", _job, limit, after, ascending=False)
        )

    async def jobs_with_status(self, statuses: Sequence[str]) -> list[FineTuningJob]:
        """Jobs in one of ``statuses``, oldest first."""
        marks = ", ".join("?" * len(statuses))
        query = f"SELECT * FROM fine_tuning_jobs WHERE status IN ({marks}) ORDER BY seq"
        return await self.store.run(lambda db: [_job(r) for r in db.execute(query, tuple(statuses))])

    async def update(
        self, job_id: str, *, only_from: Sequence[str] | None = None, **fields: Any
    ) -> FineTuningJob | None:
        """Set ``fields`` of a job (only while its status is one of ``only_from``, when given);
        the job as it is afterwards."""
        values = dict(fields)
        for name in ("error", "result_files"):
            if name in values and values[name] is not None:
                values[name] = json.dumps(list(values[name]) if name == "result_files" else values[name])
        query, parameters = update_statement("fine_tuning_jobs", job_id, values, only_from=only_from)

        def write(db: sqlite3.Connection) -> FineTuningJob | None:
            db.execute(query, parameters)
            return self._get(db, job_id)

        return await self.store.run(write)

    async def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        await self.store.run(
            lambda db: db.execute(
                "INSERT INTO fine_tuning_events (job_id, created_at, level, message, type, data) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, now(), level, message, type, json.dumps(data) if data is not None else None),
            )
        )

    async def list_events(
        self, job_id: str, *, limit: int, after: str | None
    ) -> tuple[list[FineTuningEvent], bool]:
        """Newest first; ``after``: an event id, to page on to older ones."""
        before = int(after.removeprefix("ftevent-")) if after and after[8:].isdigit() else None

        def read(db: sqlite3.Connection) -> tuple[list[FineTuningEvent], bool]:
            rows = db.execute(
                "SELECT * FROM fine_tuning_events WHERE job_id = ? AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (job_id, before if before is not None else 2**62, limit + 1),
            ).fetchall()
            return [_event(r) for r in rows[:limit]], len(rows) > limit

        return await self.store.run(read)
