"""Offline work through the OpenAI contracts: uploaded files, batches and fine-tuning jobs.

records.py   the records (files, batches, batch lines, fine-tuning jobs and events), their statuses,
             ids, and how a store writes and reads them
stores/      one contract (base.py) and two stores: SQLite under the state directory (one gateway,
             durable across restarts) and Redis (shared by gateway replicas, batch lines in streams)
files.py     what an upload must be (JSONL, size and line caps)
batches.py   batch validation and the background worker that answers batch lines
tuning.py    fine-tuning jobs: power self-distillation (teacher, LoRA training, serving, eval)
retention.py deleting files past their expiry
worker.py    the background loop the workers run on

Nothing here knows HTTP: the workers answer lines and ask for teacher answers through functions the
serving layer gives them (service/serving/gateway.py).
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
from service.jobs.records import (
    ACTIVE_BATCH_STATUSES,
    ACTIVE_TUNING_STATUSES,
    FINAL_BATCH_STATUSES,
    FINAL_TUNING_STATUSES,
    BatchLine,
    BatchRecord,
    FileRecord,
    FineTuningEvent,
    FineTuningJob,
    derived_file_id,
    now,
)
from service.jobs.retention import RetentionWorker
from service.jobs.stores import OfflineStore, RedisOfflineStore, SqliteOfflineStore
from service.jobs.tuning import FineTuningWorker, Hyperparameters, fine_tuned_model_id

__all__ = [
    "ACTIVE_BATCH_STATUSES",
    "ACTIVE_TUNING_STATUSES",
    "BATCH_ENDPOINTS",
    "COMPLETION_WINDOWS",
    "FINAL_BATCH_STATUSES",
    "FINAL_TUNING_STATUSES",
    "INPUT_PURPOSES",
    "AnswerLine",
    "BatchLine",
    "BatchRecord",
    "BatchWorker",
    "FileRecord",
    "FineTuningEvent",
    "FineTuningJob",
    "FineTuningWorker",
    "Hyperparameters",
    "OfflineStore",
    "RedisOfflineStore",
    "RetentionWorker",
    "SqliteOfflineStore",
    "check_upload",
    "derived_file_id",
    "fine_tuned_model_id",
    "now",
    "output_line",
    "parse_jsonl",
    "validate_lines",
]
