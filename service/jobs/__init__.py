"""Offline work through the OpenAI contracts: uploaded files and batches, kept on disk.

store.py     SQLite metadata and file contents under the state directory (durable across restarts)
files.py     what an upload must be (JSONL, size and line caps)
batches.py   batch validation and the background worker that answers batch lines

Nothing here knows HTTP: the worker answers a line through a function the API layer gives it.
"""

from service.jobs.batches import (
    BATCH_ENDPOINTS,
    COMPLETION_WINDOWS,
    AnswerLine,
    BatchWorker,
    output_line,
    validate_lines,
)
from service.jobs.files import INPUT_PURPOSES, check_upload, parse_jsonl
from service.jobs.store import BatchLine, BatchRecord, FileRecord, JobStore, derived_file_id

__all__ = [
    "BATCH_ENDPOINTS",
    "COMPLETION_WINDOWS",
    "INPUT_PURPOSES",
    "AnswerLine",
    "BatchLine",
    "BatchRecord",
    "BatchWorker",
    "FileRecord",
    "JobStore",
    "check_upload",
    "derived_file_id",
    "output_line",
    "parse_jsonl",
    "validate_lines",
]
