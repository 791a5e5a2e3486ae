"""Offline work through the OpenAI contracts: uploaded files and batches, kept on disk.

store.py     what a store of files and batches offers; SQLite metadata and file contents under the
             state directory (one gateway, durable across restarts)
redis_store.py  the same in a Redis shared by gateway replicas, batch lines queued in streams
files.py     what an upload must be (JSONL, size and line caps)
batches.py   batch validation and the background worker that answers batch lines
tuning.py    fine-tuning jobs: power self-distillation (teacher, LoRA training, serving, eval)
tuning_store.py  their durable state and events
worker.py    the background loop both workers run on

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
from service.jobs.redis_store import RedisJobStore
from service.jobs.store import (
    BatchLine,
    BatchRecord,
    FileRecord,
    JobStore,
    OfflineStore,
    derived_file_id,
)
from service.jobs.tuning import FineTuningWorker, Hyperparameters, fine_tuned_model_id
from service.jobs.tuning_store import (
    ACTIVE_TUNING_STATUSES,
    FineTuningEvent,
    FineTuningJob,
    FineTuningStore,
)

__all__ = [
    "ACTIVE_TUNING_STATUSES",
    "BATCH_ENDPOINTS",
    "COMPLETION_WINDOWS",
    "INPUT_PURPOSES",
    "AnswerLine",
    "BatchLine",
    "BatchRecord",
    "BatchWorker",
    "FileRecord",
    "FineTuningEvent",
    "FineTuningJob",
    "FineTuningStore",
    "FineTuningWorker",
    "Hyperparameters",
    "JobStore",
    "OfflineStore",
    "RedisJobStore",
    "check_upload",
    "derived_file_id",
    "fine_tuned_model_id",
    "output_line",
    "parse_jsonl",
    "validate_lines",
]
