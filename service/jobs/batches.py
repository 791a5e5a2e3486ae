"""Batches: a file of requests answered in the background, as OpenAI's Batch API does.

A batch moves through OpenAI's statuses, each stamped with its ``<status>_at`` time:

    validating ─┬─> in_progress ──> finalizing ──> completed
                └─> failed      ├─> cancelling ──> cancelled     (cancel)
                                └─────────────────> expired       (past its completion window)

``BatchWorker`` runs in the gateway process. It validates a new batch (each line a POST to the
batch's endpoint with a unique ``custom_id``), stores every line pending, and answers them through
``answer_line`` (the same parsing and request path as the HTTP endpoint), claiming a bounded number
at a time and fewer while interactive requests run. Each result is written when its line finishes,
once; the output and error files are assembled from those results at the end. A gateway killed
mid-batch resumes the batch at start-up with the lines still pending; with the store in Redis, the
other replicas take its claimed lines over. Either way every line appears exactly once in the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from service.jobs.files import parse_jsonl
from service.jobs.store import BatchLine, BatchRecord, OfflineStore, derived_file_id, now
from service.jobs.worker import BackgroundWorker
from service.metrics import record

__all__ = [
    "BATCH_ENDPOINTS",
    "COMPLETION_WINDOWS",
    "AnswerLine",
    "BatchWorker",
    "output_line",
    "validate_lines",
]

logger = logging.getLogger(__name__)

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
COMPLETION_WINDOWS = {"24h": 24 * 3600}

# (endpoint, body) -> (HTTP status, response body): one line answered as the endpoint would.
AnswerLine = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


def validate_lines(content: bytes, endpoint: str) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """The lines of a batch input file, or the problems that fail the batch (OpenAI's ``errors``
    entries: code, line, message, param)."""
    problems: list[dict[str, Any]] = []

    def problem(code: str, line: int | None, message: str, param: str | None = None) -> None:
        problems.append({"code": code, "line": line, "message": message, "param": param})

    try:
        objects = parse_jsonl(content)
    except Exception as exc:  # the file was checked at upload; this is a belt for old files
        problem("invalid_json_line", None, str(exc))
        return [], problems
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for number, value in objects:
        custom_id, body = value.get("custom_id"), value.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            problem("missing_required_parameter", number, "custom_id must be a string.", "custom_id")
        elif custom_id in seen:
            problem(
                "duplicate_custom_id", number, f"custom_id {custom_id!r} is not unique.", "custom_id"
            )
        if value.get("method") != "POST":
            problem("invalid_method", number, "method must be POST.", "method")
        if value.get("url") != endpoint:
            problem(
                "mismatched_endpoint",
                number,
                f"url must be the batch's endpoint {endpoint}, not {value.get('url')!r}.",
                "url",
            )
        if not isinstance(body, dict):
            problem("missing_required_parameter", number, "body must be a JSON object.", "body")
        if isinstance(custom_id, str):
            seen.add(custom_id)
        if not problems:
            lines.append(BatchLine(len(lines), str(custom_id), dict(body)))  # type: ignore[arg-type]
    if not objects:
        problem("empty_file", None, "The input file holds no requests.")
    return ([] if problems else lines), problems[:100]


def output_line(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """A line of the output (status 200) or error file, in OpenAI's format."""
    error = None
    if status != 200:
        info = body.get("error") or {}
        error = {"code": info.get("code") or str(status), "message": info.get("message", "")}
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": {
            "status_code": status,
            "request_id": str(body.get("id") or f"req_{uuid.uuid4().hex}"),
            "body": body,
        },
        "error": error,
    }


class BatchWorker(BackgroundWorker):
    """The background task that takes every batch not yet final to its end, oldest first. With a
    store shared by replicas, each replica's worker claims lines of the same batches: a batch is
    validated, started and finalized once, whichever replica gets there first."""

    def __init__(
        self,
        store: OfflineStore,
        answer_line: AnswerLine,
        *,
        concurrency: int,
        busy_concurrency: int,
        interactive_busy: Callable[[], bool],
        poll_s: float = 0.2,
    ):
        super().__init__("batch worker", idle_s=5 * poll_s)
        self.store = store
        self.answer_line = answer_line
        self.concurrency = concurrency
        self.busy_concurrency = busy_concurrency
        self.interactive_busy = interactive_busy
        self.poll_s = poll_s

    async def _pass(self) -> bool:
        """Every active batch as far as it goes; nothing done: nothing here, or every line is
        claimed by other replicas."""
        worked = False
        for batch in await self.store.active_batches():
            worked = await self._advance(batch) or worked
        return worked

    async def _advance(self, batch: BatchRecord) -> bool:
        """Take one batch as far as this worker can; whether anything was done."""
        seen = batch.status
        if batch.status == "validating":
            batch = await self._validate(batch)
        worked = batch.status != seen
        if batch.status == "in_progress":
            batch, answered = await self._answer_lines(batch)
            worked = worked or answered
        if batch.status == "finalizing":
            await self._finalize(batch, "completed")
            worked = True
        elif batch.status == "cancelling":
            await self._finalize(batch, "cancelled")
            worked = True
        return worked

    async def _validate(self, batch: BatchRecord) -> BatchRecord:
        problems: list[dict[str, Any]]
        file = await self.store.get_file(batch.input_file_id)
        if file is None or file.purpose != "batch":
            problems = [
                {
                    "code": "invalid_input_file",
                    "line": None,
                    "message": f"File {batch.input_file_id} is missing or not uploaded for batch.",
                    "param": "input_file_id",
                }
            ]
            lines: list[BatchLine] = []
        else:
            content = await self.store.read_content(file.id)
            lines, problems = validate_lines(content, batch.endpoint)
        if problems:
            failed = await self.store.set_status(
                batch.id, "failed", only_from=("validating",), errors=problems
            )
            if failed is not None:
                record.batch_finished("failed")
                return failed
        elif (started := await self.store.start_batch(batch.id, lines)) is not None:
            logger.info("batch %s: %d lines in progress", batch.id, len(lines))
            return started
        return await self.store.get_batch(batch.id) or batch  # another replica got there first

    def _allowed(self) -> int:
        """Lines in flight allowed now: the full share when no interactive request runs."""
        return self.busy_concurrency if self.interactive_busy() else self.concurrency

    async def _answer_lines(self, batch: BatchRecord) -> tuple[BatchRecord, bool]:
        """Claim lines of an in-progress batch a few at a time and answer them, until none is left
        to claim; (the batch afterwards, whether this worker recorded any line)."""
        queue: deque[BatchLine] = deque()  # claimed, not started
        running: dict[asyncio.Task[bool], BatchLine] = {}  # in start order
        answered = False
        renewed = time.monotonic()
        try:
            while True:
                current = await self.store.get_batch(batch.id)
                if current is None or current.status != "in_progress":
                    return current or batch, answered  # cancelled meanwhile: in-flight lines end below
                if current.expires_at is not None and now() >= current.expires_at:
                    return await self._expire(current), True
                allowed = self._allowed()
                if (wanted := allowed - len(running) - len(queue)) > 0:
                    queue.extend(await self.store.claim_lines(batch.id, wanted))
                while queue and len(running) < allowed:
                    line = queue.popleft()
                    running[asyncio.create_task(self._answer(batch, line))] = line
                # Interactive traffic arrived: the lines started last go back to the queue (a line
                # is recorded only when it finishes, so running it again later is safe).
                while len(running) > allowed:
                    task, line = running.popitem()
                    task.cancel()
                    queue.appendleft(line)
                record.batch_queue_depth(len(queue) + len(running))
                if not queue and not running:
                    break  # every line answered, or claimed by another replica
                renewal = self.store.claim_renewal_s
                if renewal is not None and time.monotonic() - renewed >= renewal:
                    await self.store.keep_claims(batch.id, [*queue, *running.values()])
                    renewed = time.monotonic()
                if not running:
                    await asyncio.sleep(self.poll_s)  # paused while interactive requests run
                    continue
                done, _ = await asyncio.wait(
                    running, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    line = running.pop(task)
                    if task.cancelled():
                        continue
                    if task.exception() is not None:
                        # The store failed: the line is given back, for the next claim.
                        logger.error("batch %s: a line failed: %r", batch.id, task.exception())
                        await self.store.release_lines(batch.id, [line])
                    else:
                        answered = answered or task.result()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            with contextlib.suppress(Exception):  # an unreachable store: the claims go stale instead
                await self.store.release_lines(batch.id, [*queue, *running.values()])
            record.batch_queue_depth(0)
        if current.completed + current.failed < current.total:
            return current, answered  # lines other replicas still answer (or to retry)
        finalizing = await self.store.set_status(batch.id, "finalizing", only_from=("in_progress",))
        return finalizing or await self.store.get_batch(batch.id) or current, answered

    async def _answer(self, batch: BatchRecord, line: BatchLine) -> bool:
        status, body = await self.answer_line(batch.endpoint, line.body)
        result = output_line(line.custom_id, status, body)
        recorded = await self.store.finish_line(batch.id, line, ok=status == 200, result=result)
        if recorded:
            record.batch_line("completed" if status == 200 else "failed")
        return recorded

    async def _expire(self, batch: BatchRecord) -> BatchRecord:
        """Past the completion window: unanswered lines fail with ``batch_expired``."""
        for line in await self.store.pending_lines(batch.id):
            body = {"error": {"code": "batch_expired", "message": "The batch expired first."}}
            result = output_line(line.custom_id, 408, body) | {"response": None}
            await self.store.finish_line(batch.id, line, ok=False, result=result)
        await self._finalize(batch, "expired")
        return await self.store.get_batch(batch.id) or batch

    async def _finalize(self, batch: BatchRecord, final: str) -> None:
        """Assemble the output and error files from the stored results, then mark the batch final.
        File ids are fixed by the batch, so finalizing again (after a crash, or on two replicas at
        once) rewrites the same files; the counts are those of the files."""
        results = await self.store.results(batch.id)
        files: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for role, ok in (("output", True), ("error", False)):
            lines = [line for good, line in results if good is ok]
            if not lines:
                continue
            file_id = derived_file_id(batch.id, role)
            content = "".join(_json_line(line) for line in lines).encode()
            await self.store.add_file(
                content, filename=f"{batch.id}_{role}.jsonl", purpose="batch_output", file_id=file_id
            )
            files[f"{role}_file_id"] = file_id
        completed = sum(1 for ok, _ in results if ok)
        moved = await self.store.set_status(
            batch.id,
            final,
            only_from=("in_progress", "finalizing", "cancelling"),
            completed=completed,
            failed=len(results) - completed,
            **files,
        )
        if moved is not None:
            record.batch_finished(final)
            logger.info("batch %s %s: %d lines answered", batch.id, final, len(results))


def _json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"
