"""The offline store on this gateway's disk, under one directory (``POWERSERVE_STATE_DIR``):

    <state dir>/state.sqlite3           files, batches and every batch line (pending or done, its
                                        result), fine-tuning jobs and their events
    <state dir>/files/<file id>         the bytes of each file
    <state dir>/fine_tuning/<job id>/   each fine-tuning job's work (teacher answers, adapter)

Tables: ``files``, ``batches``, ``batch_lines``, ``fine_tuning_jobs``, ``fine_tuning_events``; each
record's ``seq`` orders its list. A database written before records had owners gains the
``project`` and ``key_name`` (and ``files.expires_at``) columns when it is opened; its records belong
to no project.

SQLite runs in WAL mode with one connection per store, used from a worker thread (``asyncio.to_thread``)
under a lock, so the event loop never waits on the disk. A batch line's result is written the moment
the line finishes, in one transaction with the batch's counts, and only while the line is still
pending: a line answered twice (a restart re-ran it) is recorded once. Claims live in memory: one
worker uses the store, and after a restart every unanswered line is free again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from service.jobs.records import (
    ACTIVE_BATCH_STATUSES,
    ACTIVE_TUNING_STATUSES,
    BatchLine,
    BatchRecord,
    FileRecord,
    FineTuningEvent,
    FineTuningJob,
    batch_columns,
    batch_from_row,
    event_from_row,
    file_columns,
    file_from_row,
    is_record_id,
    job_columns,
    job_from_row,
    line_from_row,
    now,
)
from service.jobs.stores.base import OfflineStore

__all__ = ["SqliteOfflineStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    status TEXT NOT NULL,
    project TEXT,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    project TEXT,
    key_name TEXT
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    ok INTEGER,
    result TEXT,
    PRIMARY KEY (batch_id, idx)
);
CREATE INDEX IF NOT EXISTS batch_lines_pending ON batch_lines (batch_id, done);
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
    error TEXT,
    project TEXT,
    key_name TEXT
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

# Columns added since the tables were first written: (table, column, type), added when missing.
_ADDED_COLUMNS = (
    ("files", "project", "TEXT"),
    ("files", "expires_at", "INTEGER"),
    ("batches", "project", "TEXT"),
    ("batches", "key_name", "TEXT"),
    ("fine_tuning_jobs", "project", "TEXT"),
    ("fine_tuning_jobs", "key_name", "TEXT"),
)

# Indexes on the added columns (created once the columns exist).
_INDEXES = """
CREATE INDEX IF NOT EXISTS files_project ON files (project, seq);
CREATE INDEX IF NOT EXISTS files_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS batches_project ON batches (project, seq);
CREATE INDEX IF NOT EXISTS fine_tuning_jobs_project ON fine_tuning_jobs (project, seq);
"""


def _update_statement(
    table: str, row_id: str, values: Mapping[str, Any], *, only_from: Sequence[str] = ()
) -> tuple[str, list[Any]]:
    """SQL setting ``values`` on the row ``row_id`` of ``table``, only while its status is one of
    ``only_from`` when given."""
    assignments = ", ".join(f"{name} = ?" for name in values)
    query = f"UPDATE {table} SET {assignments} WHERE id = ?"
    parameters: list[Any] = [*values.values(), row_id]
    if only_from:
        query += f" AND status IN ({', '.join('?' * len(only_from))})"
        parameters += list(only_from)
    return query, parameters


def _insert_statement(
    table: str, values: Mapping[str, Any], *, replace: bool = False
) -> tuple[str, list[Any]]:
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    marks = ", ".join("?" * len(values))
    return f"{verb} INTO {table} ({', '.join(values)}) VALUES ({marks})", list(values.values())


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a database written by an older gateway lacks."""
    for table, column, kind in _ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class SqliteOfflineStore(OfflineStore):
    """Files, batches and fine-tuning jobs on disk, for one gateway (see the module's docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.tuning_dir = self.root / "fine_tuning"
        self.tuning_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit; transactions are explicit (BEGIN IMMEDIATE) where several writes belong together.
        self._db = sqlite3.connect(
            self.root / "state.sqlite3", check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        _migrate(self._db)
        self._db.executescript(_INDEXES)
        self._claimed: dict[str, set[int]] = {}  # batch id -> lines handed to the worker

    async def close(self) -> None:
        with self._lock:
            self._db.close()

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in a thread, under the store's lock."""

        def locked() -> T:
            with self._lock:
                return work(self._db)

        return await asyncio.to_thread(locked)

    @staticmethod
    def _transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
        """``work()`` as one transaction (inside ``_run``)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @staticmethod
    def _one(db: sqlite3.Connection, table: str, row_id: str) -> dict[str, Any] | None:
        row = db.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()
        return dict(row) if row else None

    # --- files ---------------------------------------------------------------------------------

    def content_path(self, file_id: str) -> Path:
        """Where a file's bytes are (an id that is no file's id has none: it names no path)."""
        if not is_record_id(file_id):
            raise FileNotFoundError(f"no file {file_id!r}")
        return self.files_dir / file_id

    async def _put_file(self, record: FileRecord, content: bytes) -> None:
        query, parameters = _insert_statement("files", file_columns(record), replace=True)

        def write(db: sqlite3.Connection) -> None:
            path = self.content_path(record.id)
            partial = path.with_suffix(".part")
            partial.write_bytes(content)
            partial.replace(path)
            db.execute(query, parameters)

        await self._run(write)

    async def get_file(self, file_id: str) -> FileRecord | None:
        row = await self._run(lambda db: self._one(db, "files", file_id))
        return file_from_row(row) if row else None

    async def list_files(
        self,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        ascending: bool,
        project: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        rows, more = await self._run(
            lambda db: self._page(db, "files", limit, after, ascending, project, purpose=purpose)
        )
        return [file_from_row(row) for row in rows], more

    async def read_content(self, file_id: str) -> bytes:
        return await asyncio.to_thread(self.content_path(file_id).read_bytes)

    async def delete_file(self, file_id: str) -> bool:
        if not is_record_id(file_id):
            return False

        def delete(db: sqlite3.Connection) -> bool:
            deleted = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
            self.content_path(file_id).unlink(missing_ok=True)
            return deleted

        return await self._run(delete)

    async def expired_files(self, now: int, limit: int) -> list[FileRecord]:
        query = (
            "SELECT * FROM files WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "ORDER BY expires_at, seq LIMIT ?"
        )
        rows = await self._run(lambda db: [dict(r) for r in db.execute(query, (now, limit))])
        return [file_from_row(row) for row in rows]

    async def project_bytes(self, project: str | None) -> int:
        query = (
            "SELECT COALESCE(SUM(bytes), 0) FROM files "
            "WHERE project IS ? AND (expires_at IS NULL OR expires_at > ?)"
        )
        at = now()
        return int(await self._run(lambda db: db.execute(query, (project, at)).fetchone()[0]))

    # --- batches -------------------------------------------------------------------------------

    async def _put_batch(self, record: BatchRecord) -> None:
        query, parameters = _insert_statement("batches", batch_columns(record))
        await self._run(lambda db: db.execute(query, parameters))

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = await self._run(lambda db: self._one(db, "batches", batch_id))
        return batch_from_row(row) if row else None

    async def list_batches(
        self, *, limit: int, after: str | None, project: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        rows, more = await self._run(lambda db: self._page(db, "batches", limit, after, False, project))
        return [batch_from_row(row) for row in rows], more

    async def active_batches(self) -> list[BatchRecord]:
        marks = ", ".join("?" * len(ACTIVE_BATCH_STATUSES))
        query = f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY seq"
        rows = await self._run(lambda db: [dict(r) for r in db.execute(query, ACTIVE_BATCH_STATUSES)])
        return [batch_from_row(row) for row in rows]

    async def active_batch_count(self, project: str | None) -> int:
        return await self._count_active("batches", project, ACTIVE_BATCH_STATUSES)

    async def _move_batch(
        self, batch_id: str, values: dict[str, Any], *, only_from: Sequence[str], final: bool
    ) -> BatchRecord | None:
        query, parameters = _update_statement("batches", batch_id, values, only_from=only_from)

        def write(db: sqlite3.Connection) -> dict[str, Any] | None:
            moved = db.execute(query, parameters).rowcount > 0
            return self._one(db, "batches", batch_id) if moved else None

        row = await self._run(write)
        return batch_from_row(row) if row else None

    async def start_batch(self, batch_id: str, lines: Sequence[BatchLine]) -> BatchRecord | None:
        """validating → in_progress, with every line stored pending (once: a restart that validates
        again replaces nothing); None when the batch was no longer validating."""

        def write(db: sqlite3.Connection) -> dict[str, Any] | None:
            def work() -> bool:
                moved = db.execute(
                    "UPDATE batches SET status = 'in_progress', in_progress_at = ?, total = ? "
                    "WHERE id = ? AND status = 'validating'",
                    (now(), len(lines), batch_id),
                ).rowcount
                if moved:
                    db.executemany(
                        "INSERT OR IGNORE INTO batch_lines (batch_id, idx, custom_id, body) "
                        "VALUES (?, ?, ?, ?)",
                        [(batch_id, line.idx, line.custom_id, json.dumps(line.body)) for line in lines],
                    )
                return bool(moved)

            return self._one(db, "batches", batch_id) if self._transaction(db, work) else None

        row = await self._run(write)
        return batch_from_row(row) if row else None

    # --- batch lines ---------------------------------------------------------------------------

    async def pending_lines(self, batch_id: str) -> list[BatchLine]:
        def read(db: sqlite3.Connection) -> list[BatchLine]:
            rows = db.execute(
                "SELECT idx, custom_id, body FROM batch_lines WHERE batch_id = ? AND done = 0 "
                "ORDER BY idx",
                (batch_id,),
            )
            return [line_from_row(row) for row in rows]

        return await self._run(read)

    async def claim_lines(self, batch_id: str, count: int) -> list[BatchLine]:
        """Pending lines this process has not handed out yet (a claim never goes stale here)."""
        claimed = self._claimed.setdefault(batch_id, set())
        held = sorted(claimed)  # few: the lines in flight

        def read(db: sqlite3.Connection) -> list[BatchLine]:
            rows = db.execute(
                "SELECT idx, custom_id, body FROM batch_lines WHERE batch_id = ? AND done = 0 "
                f"AND idx NOT IN ({', '.join('?' * len(held))}) ORDER BY idx LIMIT ?",
                (batch_id, *held, count),
            )
            return [line_from_row(row) for row in rows]

        taken = await self._run(read) if count > 0 else []
        claimed.update(line.idx for line in taken)
        return taken

    async def release_lines(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        claimed = self._claimed.get(batch_id, set())
        claimed.difference_update(line.idx for line in lines)
        if not claimed:
            self._claimed.pop(batch_id, None)

    async def finish_line(
        self, batch_id: str, line: BatchLine, *, ok: bool, result: dict[str, Any]
    ) -> bool:
        idx = line.idx  # the claim is this process's, in memory

        def write(db: sqlite3.Connection) -> bool:
            def work() -> bool:
                # Only while the batch runs: after a cancel, the files hold what came before.
                updated = db.execute(
                    "UPDATE batch_lines SET done = 1, ok = ?, result = ? "
                    "WHERE batch_id = ? AND idx = ? AND done = 0 AND "
                    "(SELECT status FROM batches WHERE id = ?) = 'in_progress'",
                    (int(ok), json.dumps(result), batch_id, idx, batch_id),
                ).rowcount
                if updated:
                    column = "completed" if ok else "failed"
                    db.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (batch_id,))
                return bool(updated)

            return self._transaction(db, work)

        recorded = await self._run(write)
        await self.release_lines(batch_id, [line])
        return recorded

    async def results(self, batch_id: str) -> list[tuple[bool, dict[str, Any]]]:
        def read(db: sqlite3.Connection) -> list[tuple[bool, dict[str, Any]]]:
            rows = db.execute(
                "SELECT ok, result FROM batch_lines WHERE batch_id = ? AND done = 1 ORDER BY idx",
                (batch_id,),
            )
            return [(bool(r["ok"]), json.loads(r["result"])) for r in rows]

        return await self._run(read)

    # --- fine-tuning jobs ----------------------------------------------------------------------

    async def _put_job(self, job: FineTuningJob) -> None:
        query, parameters = _insert_statement("fine_tuning_jobs", job_columns(job))
        await self._run(lambda db: db.execute(query, parameters))

    async def get_job(self, job_id: str) -> FineTuningJob | None:
        row = await self._run(lambda db: self._one(db, "fine_tuning_jobs", job_id))
        return job_from_row(row) if row else None

    async def list_jobs(
        self, *, limit: int, after: str | None, project: str | None = None
    ) -> tuple[list[FineTuningJob], bool]:
        rows, more = await self._run(
            lambda db: self._page(db, "fine_tuning_jobs", limit, after, False, project)
        )
        return [job_from_row(row) for row in rows], more

    async def jobs_with_status(self, statuses: Sequence[str]) -> list[FineTuningJob]:
        marks = ", ".join("?" * len(statuses))
        query = f"SELECT * FROM fine_tuning_jobs WHERE status IN ({marks}) ORDER BY seq"
        rows = await self._run(lambda db: [dict(r) for r in db.execute(query, tuple(statuses))])
        return [job_from_row(row) for row in rows]

    async def active_job_count(self, project: str | None) -> int:
        return await self._count_active("fine_tuning_jobs", project, ACTIVE_TUNING_STATUSES)

    async def _count_active(self, table: str, project: str | None, statuses: Sequence[str]) -> int:
        """How many of ``project``'s rows of ``table`` have one of ``statuses`` (one aggregate over
        the project's rows, by its index)."""
        marks = ", ".join("?" * len(statuses))
        query = f"SELECT COUNT(*) FROM {table} WHERE project IS ? AND status IN ({marks})"
        parameters = (project, *statuses)
        return int(await self._run(lambda db: db.execute(query, parameters).fetchone()[0]))

    async def _update_job(
        self, job_id: str, values: dict[str, Any], *, only_from: Sequence[str]
    ) -> FineTuningJob | None:
        def write(db: sqlite3.Connection) -> dict[str, Any] | None:
            if values:
                db.execute(*_update_statement("fine_tuning_jobs", job_id, values, only_from=only_from))
            return self._one(db, "fine_tuning_jobs", job_id)

        row = await self._run(write)
        return job_from_row(row) if row else None

    async def _put_event(self, values: dict[str, Any]) -> None:
        query, parameters = _insert_statement("fine_tuning_events", values)
        await self._run(lambda db: db.execute(query, parameters))

    async def _events_before(
        self, job_id: str, before: int | None, limit: int
    ) -> tuple[list[FineTuningEvent], bool]:
        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(
                "SELECT * FROM fine_tuning_events WHERE job_id = ? AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (job_id, before if before is not None else 2**62, limit + 1),
            )
            return [dict(row) for row in rows]

        rows = await self._run(read)
        return [event_from_row(row) for row in rows[:limit]], len(rows) > limit

    # --- paging ----------------------------------------------------------------------------------

    @staticmethod
    def _page(
        db: sqlite3.Connection,
        table: str,
        limit: int,
        after: str | None,
        ascending: bool,
        project: str | None,
        purpose: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of ``table``'s rows by ``seq`` after the row ``after`` (from the start when it
        is not among the rows listed), and whether more follow."""
        where, parameters = [], []
        if project is not None:
            where.append("project = ?")
            parameters.append(project)
        if purpose is not None:
            where.append("purpose = ?")
            parameters.append(purpose)
        if after is not None:
            cursor = f"SELECT seq FROM {table} WHERE id = ?"
            cursor_parameters: list[Any] = [after]
            if project is not None:
                cursor += " AND project = ?"
                cursor_parameters.append(project)
            where.append(
                f"seq {'>' if ascending else '<'} COALESCE(({cursor}), {'-1' if ascending else '1e18'})"
            )
            parameters += cursor_parameters
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if ascending else "DESC"
        rows = db.execute(
            f"SELECT * FROM {table} {clause} ORDER BY seq {order} LIMIT ?", [*parameters, limit + 1]
        ).fetchall()
        return [dict(row) for row in rows[:limit]], len(rows) > limit
