"""Durable state of files and batches. ``OfflineStore`` is what the API and the batch worker need of
it; ``JobStore`` keeps it on this gateway's disk, under one directory (``POWERSERVE_STATE_DIR``),
``RedisJobStore`` (redis_store.py) in a Redis that several gateway replicas share.

    <state dir>/state.sqlite3      files, batches, and every batch line (pending or done, its result)
    <state dir>/files/<file id>    the bytes of each file

SQLite runs in WAL mode with one connection per store, used from a worker thread (``asyncio.to_thread``)
under a lock, so the event loop never waits on the disk. A batch line's result is written the moment
the line finishes, in one transaction with the batch's counts, and only while the line is still
pending: a line answered twice (a restart re-ran it) is recorded once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = [
    "ACTIVE_BATCH_STATUSES",
    "BATCH_TIMES",
    "BatchLine",
    "BatchRecord",
    "FileRecord",
    "JobStore",
    "OfflineStore",
    "derived_file_id",
    "new_file_id",
    "now",
    "update_statement",
]

T = TypeVar("T")

# Batches the worker still has to act on; the others are final.
ACTIVE_BATCH_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    status TEXT NOT NULL
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
    failed INTEGER NOT NULL DEFAULT 0
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
"""


def update_statement(
    table: str, row_id: str, values: dict[str, Any], *, only_from: Sequence[str] | None = None
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


def now() -> int:
    return int(time.time())


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def derived_file_id(owner: str, role: str) -> str:
    """A file id fixed by its owner and role (a batch's output): writing it twice is idempotent."""
    return "file-" + hashlib.blake2b(f"{owner}/{role}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class FileRecord:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "expires_at": None,
            "status_details": None,
        }


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


class OfflineStore(Protocol):
    """Files and batches, wherever they are kept. Lines are *claimed* by a worker before it answers
    them: a claimed line is not handed to another worker while its claim lives, and a line is
    recorded once, by whichever worker finishes it first."""

    # Renew claims this often (seconds), or None where a claim lives as long as its process.
    claim_renewal_s: float | None

    async def add_file(
        self, content: bytes, *, filename: str, purpose: str, file_id: str | None = None
    ) -> FileRecord: ...
    async def get_file(self, file_id: str) -> FileRecord | None: ...
    async def list_files(
        self, *, purpose: str | None, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[FileRecord], bool]: ...
    async def read_content(self, file_id: str) -> bytes: ...
    async def delete_file(self, file_id: str) -> bool: ...

    async def add_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        window_s: int,
        metadata: dict[str, str] | None,
    ) -> BatchRecord: ...
    async def get_batch(self, batch_id: str) -> BatchRecord | None: ...
    async def list_batches(self, *, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]: ...
    async def active_batches(self) -> list[BatchRecord]: ...
    async def set_status(
        self, batch_id: str, status: str, *, only_from: Sequence[str] | None = None, **fields: Any
    ) -> BatchRecord | None:
        """Move a batch to ``status`` (stamping ``<status>_at``), only from one of ``only_from``
        when given: the batch afterwards, or None when this call did not move it."""
        ...

    async def start_batch(self, batch_id: str, lines: Sequence[BatchLine]) -> BatchRecord | None:
        """validating -> in_progress with every line stored unclaimed: the batch, or None when
        another call started it (or it is no longer validating)."""
        ...

    async def claim_lines(self, batch_id: str, count: int) -> list[BatchLine]:
        """Up to ``count`` unanswered lines no live claim holds, now claimed by this store."""
        ...

    async def keep_claims(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        """Renew the claims on lines still being worked on."""
        ...

    async def release_lines(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        """Give up claims on lines this worker will not answer (another may take them at once)."""
        ...

    async def finish_line(
        self, batch_id: str, line: BatchLine, *, ok: bool, result: dict[str, Any]
    ) -> bool:
        """Record a line's result, while the batch is in progress, and end its claim; whether this
        call recorded it (False: the line was already answered, or the batch cancelled)."""
        ...

    async def pending_lines(self, batch_id: str) -> list[BatchLine]: ...
    async def results(self, batch_id: str) -> list[tuple[bool, dict[str, Any]]]: ...
    async def close(self) -> None: ...


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        row["id"], row["bytes"], row["created_at"], row["filename"], row["purpose"], row["status"]
    )


def _batch(row: sqlite3.Row) -> BatchRecord:
    return BatchRecord(
        id=row["id"],
        status=row["status"],
        input_file_id=row["input_file_id"],
        endpoint=row["endpoint"],
        completion_window=row["completion_window"],
        created_at=row["created_at"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        times={name: row[name] for name in BATCH_TIMES},
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        errors=json.loads(row["errors"]) if row["errors"] else None,
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
    )


class JobStore:
    """Files and batches on disk, for one gateway. Every method is a coroutine that does its I/O
    in a thread. Claims live in memory: one worker uses the store, and after a restart every
    unanswered line is free again."""

    claim_renewal_s: float | None = None

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit; transactions are explicit (BEGIN IMMEDIATE) where several writes belong together.
        self._db = sqlite3.connect(
            self.root / "state.sqlite3", check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._claimed: dict[str, set[int]] = {}  # batch id -> lines handed to the worker

    async def close(self) -> None:
        with self._lock:
            self._db.close()

    def run_script(self, script: str) -> None:
        """Run SQL statements now (another module's schema, at start-up)."""
        with self._lock:
            self._db.executescript(script)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in a thread, under the store's lock."""

        def locked() -> T:
            with self._lock:
                return work(self._db)

        return await asyncio.to_thread(locked)

    def transaction(self, db: sqlite3.Connection, work: Callable[[], T]) -> T:
        """``work()`` as one transaction (inside ``run``)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # --- files ---------------------------------------------------------------------------------

    def content_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    async def add_file(
        self, content: bytes, *, filename: str, purpose: str, file_id: str | None = None
    ) -> FileRecord:
        """Store a file (its bytes first, then its row: a row never names missing bytes)."""
        record = FileRecord(
            file_id or new_file_id(), len(content), now(), filename, purpose, "processed"
        )

        def write(db: sqlite3.Connection) -> FileRecord:
            path = self.content_path(record.id)
            partial = path.with_suffix(".part")
            partial.write_bytes(content)
            partial.replace(path)
            db.execute(
                "INSERT OR REPLACE INTO files (id, bytes, created_at, filename, purpose, status) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.bytes, record.created_at, filename, purpose, record.status),
            )
            return record

        return await self.run(write)

    async def get_file(self, file_id: str) -> FileRecord | None:
        def read(db: sqlite3.Connection) -> FileRecord | None:
            row = db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
            return _file(row) if row else None

        return await self.run(read)

    async def list_files(
        self, *, purpose: str | None, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[FileRecord], bool]:
        """One page of files by creation order, and whether more follow."""
        return await self.run(
            lambda db: self.page(db, "files", _file, limit, after, ascending, purpose=purpose)
        )

    async def read_content(self, file_id: str) -> bytes:
        return await asyncio.to_thread(self.content_path(file_id).read_bytes)

    async def delete_file(self, file_id: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            deleted = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
            self.content_path(file_id).unlink(missing_ok=True)
            return deleted

        return await self.run(delete)

    # --- batches -------------------------------------------------------------------------------

    async def add_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        window_s: int,
        metadata: dict[str, str] | None,
    ) -> BatchRecord:
        batch_id = f"batch_{uuid.uuid4().hex}"
        created = now()

        def write(db: sqlite3.Connection) -> BatchRecord:
            db.execute(
                "INSERT INTO batches (id, status, input_file_id, endpoint, completion_window, "
                "metadata, created_at, expires_at) VALUES (?, 'validating', ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    input_file_id,
                    endpoint,
                    completion_window,
                    json.dumps(metadata) if metadata is not None else None,
                    created,
                    created + window_s,
                ),
            )
            return self._get_batch(db, batch_id)  # type: ignore[return-value]

        return await self.run(write)

    def _get_batch(self, db: sqlite3.Connection, batch_id: str) -> BatchRecord | None:
        row = db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return _batch(row) if row else None

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        return await self.run(lambda db: self._get_batch(db, batch_id))

    async def list_batches(self, *, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """Newest first, as OpenAI lists them."""
        return await self.run(lambda db: self.page(db, "batches", _batch, limit, after, ascending=False))

    async def active_batches(self) -> list[BatchRecord]:
        """Batches not yet final, oldest first."""
        marks = ", ".join("?" * len(ACTIVE_BATCH_STATUSES))
        query = f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY seq"
        return await self.run(lambda db: [_batch(r) for r in db.execute(query, ACTIVE_BATCH_STATUSES)])

    async def set_status(
        self,
        batch_id: str,
        status: str,
        *,
        only_from: Sequence[str] | None = None,
        **fields: Any,
    ) -> BatchRecord | None:
        """Move a batch to ``status`` (stamping ``<status>_at``), only from one of ``only_from``
        when given: the batch afterwards, or None when this call did not move it."""
        values = dict(fields)
        stamp = f"{status}_at"
        if stamp in BATCH_TIMES:
            values.setdefault(stamp, now())
        for name in ("errors", "metadata"):
            if name in values and values[name] is not None:
                values[name] = json.dumps(values[name])
        query, parameters = update_statement(
            "batches", batch_id, {"status": status, **values}, only_from=only_from
        )

        def write(db: sqlite3.Connection) -> BatchRecord | None:
            moved = db.execute(query, parameters).rowcount > 0
            return self._get_batch(db, batch_id) if moved else None

        return await self.run(write)

    async def start_batch(self, batch_id: str, lines: Sequence[BatchLine]) -> BatchRecord | None:
        """validating → in_progress, with every line stored pending (once: a restart that validates
        again replaces nothing); None when the batch was no longer validating."""

        def write(db: sqlite3.Connection) -> BatchRecord | None:
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

            return self._get_batch(db, batch_id) if self.transaction(db, work) else None

        return await self.run(write)

    async def pending_lines(self, batch_id: str) -> list[BatchLine]:
        def read(db: sqlite3.Connection) -> list[BatchLine]:
            rows = db.execute(
                "SELECT idx, custom_id, body FROM batch_lines WHERE batch_id = ? AND done = 0 "
                "ORDER BY idx",
                (batch_id,),
            )
            return [BatchLine(r["idx"], r["custom_id"], json.loads(r["body"])) for r in rows]

        return await self.run(read)

    async def claim_lines(self, batch_id: str, count: int) -> list[BatchLine]:
        claimed = self._claimed.setdefault(batch_id, set())
        held = sorted(claimed)  # few: the lines in flight

        def read(db: sqlite3.Connection) -> list[BatchLine]:
            rows = db.execute(
                "SELECT idx, custom_id, body FROM batch_lines WHERE batch_id = ? AND done = 0 "
                f"AND idx NOT IN ({', '.join('?' * len(held))}) ORDER BY idx LIMIT ?",
                (batch_id, *held, count),
            )
            return [BatchLine(r["idx"], r["custom_id"], json.loads(r["body"])) for r in rows]

        taken = await self.run(read) if count > 0 else []
        claimed.update(line.idx for line in taken)
        return taken

    async def keep_claims(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        return None  # a claim here lives as long as the process

    async def release_lines(self, batch_id: str, lines: Sequence[BatchLine]) -> None:
        claimed = self._claimed.get(batch_id, set())
        claimed.difference_update(line.idx for line in lines)
        if not claimed:
            self._claimed.pop(batch_id, None)

    async def finish_line(
        self, batch_id: str, line: BatchLine, *, ok: bool, result: dict[str, Any]
    ) -> bool:
        """Record a line's result, if it is still pending; whether this call recorded it."""
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

            return self.transaction(db, work)

        recorded = await self.run(write)
        await self.release_lines(batch_id, [line])
        return recorded

    async def results(self, batch_id: str) -> list[tuple[bool, dict[str, Any]]]:
        """Each answered line's (ok, output line), in input order."""

        def read(db: sqlite3.Connection) -> list[tuple[bool, dict[str, Any]]]:
            rows = db.execute(
                "SELECT ok, result FROM batch_lines WHERE batch_id = ? AND done = 1 ORDER BY idx",
                (batch_id,),
            )
            return [(bool(r["ok"]), json.loads(r["result"])) for r in rows]

        return await self.run(read)

    # --- paging ----------------------------------------------------------------------------------

    def page(
        self,
        db: sqlite3.Connection,
        table: str,
        build: Callable[[sqlite3.Row], T],
        limit: int,
        after: str | None,
        ascending: bool,
        purpose: str | None = None,
    ) -> tuple[list[T], bool]:
        where, parameters = [], []
        if purpose is not None:
            where.append("purpose = ?")
            parameters.append(purpose)
        if after is not None:
            where.append(
                f"seq {'>' if ascending else '<'} "
                f"COALESCE((SELECT seq FROM {table} WHERE id = ?), {'-1' if ascending else '1e18'})"
            )
            parameters.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if ascending else "DESC"
        rows = db.execute(
            f"SELECT * FROM {table} {clause} ORDER BY seq {order} LIMIT ?", [*parameters, limit + 1]
        ).fetchall()
        return [build(row) for row in rows[:limit]], len(rows) > limit
