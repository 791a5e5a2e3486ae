"""Batches: a file of requests answered in the background, as OpenAI's Batch API does.

A batch moves through OpenAI's statuses, each stamped with its ``<status>_at`` time:

    validating ─┬─> in_progress ──> finalizing ──> completed
                └─> failed      ├─> cancelling ──> cancelled     (cancel)
                                └─────────────────> expired       (past its completion window)

``BatchWorker`` runs in the gateway process. It validates a new batch (each line a POST to the
batch's endpoint with a unique ``custom_id``), stores every line pending, and answers them through
``answer_line`` (the same parsing and request path as the HTTP endpoint), claiming a bounded number
at a time and fewer while interactive requests run. Offline capacity is shared fairly: each pass
gives every project one turn of a bounded number of lines (its oldest batch first), so one
project's 50,000-line batch does not make the others wait, and every batch's expiry is checked on
every pass. Each result is written when its line finishes,
once; the output and error files are assembled from those results at the end. A gateway killed
mid-batch resumes the batch at start-up with the lines still pending; with the store in Redis, the
other replicas take its claimed lines over. Either way every line appears exactly once in the output.

A store that fails (a full disk, a Redis out of memory, a read-only database) stalls only the batch
it failed for: that batch backs off (skipped for 1, 2, 4, ... seconds) while the pass goes on with
the others. A line answered whose result could not be written keeps its result in memory (at most
the lines in flight) and its claim, and only the write is tried again: the engine is never asked
for it twice. After ``store_failures`` failures in a row the batch is failed, with a
``state_unavailable`` entry in its ``errors``, when the store takes that write; otherwise it keeps
backing off, and carries on where it stopped once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from service.jobs.files import parse_jsonl
from service.jobs.records import ACTIVE_BATCH_STATUSES, BatchLine, BatchRecord, derived_file_id, now
from service.jobs.stores import OfflineStore
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

# (batch, line body) -> (HTTP status, response body): one line answered as the batch's endpoint
# would answer it for the batch's owner.
AnswerLine = Callable[[BatchRecord, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


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


# What the worker was doing when the store failed for a batch: the ``operation`` counted in
# powerserve_batch_store_errors_total, and the words of the error a batch failed for it carries.
_DOING = {
    "validate": "validating its input file",
    "claim": "taking its lines",
    "record": "recording its results",
    "finalize": "writing its output files",
    "expire": "expiring it",
}


class _StoreFault(Exception):
    """A step of one batch failed (``operation``: which, a key of ``_DOING``); its cause is the
    store's error."""

    def __init__(self, operation: str):
        super().__init__(operation)
        self.operation = operation


def _fault(operation: str, exc: BaseException) -> _StoreFault:
    """``exc`` as a fault of ``operation``, unless an inner step named it already."""
    if isinstance(exc, _StoreFault):
        return exc
    fault = _StoreFault(operation)
    fault.__cause__ = exc
    return fault


@contextlib.contextmanager
def _step(operation: str) -> Iterator[None]:
    """Whatever fails inside is a fault of ``operation`` (or of the inner step that named it)."""
    try:
        yield
    except _StoreFault:
        raise
    except Exception as exc:
        raise _StoreFault(operation) from exc


@dataclass(frozen=True)
class _Kept:
    """A line answered whose result is not written yet (the write is what is tried again)."""

    line: BatchLine
    ok: bool
    result: dict[str, Any]


@dataclass
class _Backoff:
    """A batch the store failed for, skipped until ``retry_at`` (``time.monotonic()``)."""

    failures: int = 0  # in a row
    operation: str = ""  # what failed last
    retry_at: float = 0.0
    renewed: float = field(default_factory=time.monotonic)  # claims on its kept lines, last renewed


class BatchWorker(BackgroundWorker):
    """The background task that takes every batch not yet final to its end, oldest first. With a
    store shared by replicas, each replica's worker claims lines of the same batches: a batch is
    validated, started and finalized once, whichever replica gets there first.

    A store failure for one batch backs that batch off (``backoff_s``, doubling up to
    ``max_backoff_s``); after ``store_failures`` in a row it is failed (``state_unavailable``)."""

    def __init__(
        self,
        store: OfflineStore,
        answer_line: AnswerLine,
        *,
        concurrency: int,
        busy_concurrency: int,
        interactive_busy: Callable[[], bool],
        poll_s: float = 0.2,
        turn_lines: int | None = None,
        output_retention_s: int = 0,
        store_failures: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ):
        super().__init__("batch worker", idle_s=5 * poll_s)
        # Lines one batch may claim in its project's turn before the next project's batch.
        self.turn_lines = turn_lines or 4 * concurrency
        # How long output and error files are kept (0: until deleted).
        self.output_retention_s = output_retention_s
        self.store = store
        self.answer_line = answer_line
        self.concurrency = concurrency
        self.busy_concurrency = busy_concurrency
        self.interactive_busy = interactive_busy
        self.poll_s = poll_s
        self.store_failures = max(1, store_failures)
        self.backoff_s = backoff_s
        self.max_backoff_s = max(backoff_s, max_backoff_s)
        # batch id -> line index -> its result, answered and not written yet (at most the lines in
        # flight: no line is claimed while results of its batch wait here).
        self._kept: dict[str, dict[int, _Kept]] = {}
        self._backoffs: dict[str, _Backoff] = {}  # batches the store failed for, by id

    async def _pass(self) -> bool:
        """One round over the active batches: each project's oldest batch with lines left gets a
        turn of ``turn_lines`` lines, the others are validated, expired or finalized as due.
        Nothing done: nothing here, or every line is claimed by other replicas. A batch backing
        off is skipped (its project's turn goes to its next batch); a store failure for one batch
        backs that batch off and the pass goes on. Only a failure to list the batches fails the
        pass (the loop tries again)."""
        worked = False
        served: set[str | None] = set()  # projects that had their turn in this pass
        try:
            batches = await self.store.active_batches()  # oldest first
        except Exception:
            record.batch_store_error("list")
            raise
        for batch in batches:
            backoff = self._backoffs.get(batch.id)
            if backoff is not None and time.monotonic() < backoff.retry_at:
                await self._renew_kept(batch.id, backoff)
                continue
            turn = batch.status == "in_progress" and batch.project not in served
            if turn:
                served.add(batch.project)
            try:
                worked = await self._advance(batch, answer=turn) or worked
            except _StoreFault as fault:
                await self._back_off(batch, fault)
            else:
                # The step that failed went through (lines are taken in the batch's turn only).
                if backoff is not None and (turn or backoff.operation != "claim"):
                    del self._backoffs[batch.id]
        active = {batch.id for batch in batches}
        for batch_id in (self._kept.keys() | self._backoffs.keys()) - active:
            await self._forget(batch_id)  # final meanwhile (another replica, a cancel)
        return worked

    async def _advance(self, batch: BatchRecord, *, answer: bool = True) -> bool:
        """Take one batch as far as this worker can now (its lines only when ``answer``: its
        project's turn); whether anything was done. Results kept from a failed write are written
        first. A store failure raises ``_StoreFault``."""
        worked = False
        if self._kept.get(batch.id):
            with _step("record"):
                worked = await self._record_kept(batch.id)
        seen = batch.status
        if batch.status == "validating":
            with _step("validate"):
                batch = await self._validate(batch)
        worked = worked or batch.status != seen
        if batch.status == "in_progress" and batch.expires_at is not None and now() >= batch.expires_at:
            batch, worked = await self._expire(batch), True
        if batch.status == "in_progress" and answer:
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
        """Claim lines of an in-progress batch a few at a time and answer them, until its turn's
        ``turn_lines`` are claimed or none is left to claim; (the batch afterwards, whether this
        worker recorded any line). After a store failure no line is claimed or started: those
        running finish (a result that cannot be written is kept), then the failure is raised."""
        queue: deque[BatchLine] = deque()  # claimed, not started
        running: dict[asyncio.Task[bool], BatchLine] = {}  # in start order
        answered = False
        claimed_in_turn = 0
        renewed = time.monotonic()
        current = batch
        failure: _StoreFault | None = None  # the turn's first
        try:
            while True:
                allowed = self._allowed()
                if failure is None:
                    try:
                        latest = await self.store.get_batch(batch.id)
                        if latest is None or latest.status != "in_progress":
                            # Cancelled meanwhile: in-flight lines end below.
                            return latest or batch, answered
                        current = latest
                        if current.expires_at is not None and now() >= current.expires_at:
                            return await self._expire(current), True
                        wanted = min(
                            allowed - len(running) - len(queue), self.turn_lines - claimed_in_turn
                        )
                        if wanted > 0:
                            claimed = await self.store.claim_lines(batch.id, wanted)
                            if taken_over := sum(line.taken_over for line in claimed):
                                record.batch_lines_taken_over(taken_over)  # from a replica that died
                            claimed_in_turn += len(claimed)
                            queue.extend(claimed)
                    except Exception as exc:
                        failure = _fault("claim", exc)
                while queue and len(running) < allowed and failure is None:
                    line = queue.popleft()
                    running[asyncio.create_task(self._answer(batch, line))] = line
                # Interactive traffic arrived: the lines started last go back to the queue (a line
                # is recorded only when it finishes, so running it again later is safe).
                while len(running) > allowed:
                    task, line = running.popitem()
                    task.cancel()
                    queue.appendleft(line)
                record.batch_queue_depth(len(queue) + len(running))
                if not running and (not queue or failure is not None):
                    break  # the turn is over, or every line answered or claimed by another replica
                renewal = self.store.claim_renewal_s
                if failure is None and renewal is not None and time.monotonic() - renewed >= renewal:
                    try:
                        await self.store.keep_claims(batch.id, [*queue, *running.values()])
                    except Exception as exc:
                        failure = _fault("claim", exc)
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
                    if (error := task.exception()) is not None:
                        # Its result could not be written: it is kept, written after the backoff.
                        failure = failure or _fault("record", error)
                    else:
                        answered = answered or task.result()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            kept = self._kept.get(batch.id, {})
            unanswered = [line for line in [*queue, *running.values()] if line.idx not in kept]
            with contextlib.suppress(Exception):  # an unreachable store: the claims go stale instead
                await self.store.release_lines(batch.id, unanswered)
            record.batch_queue_depth(0)
        if failure is not None:
            raise failure
        if current.completed + current.failed < current.total:
            return current, answered  # lines other replicas still answer (or to retry)
        with _step("finalize"):
            finalizing = await self.store.set_status(batch.id, "finalizing", only_from=("in_progress",))
            return finalizing or await self.store.get_batch(batch.id) or current, answered

    async def _answer(self, batch: BatchRecord, line: BatchLine) -> bool:
        """Answer a line (unless its result is kept already) and record it; a store failure
        raises, with the result kept."""
        if line.idx not in self._kept.get(batch.id, {}):
            status, body = await self.answer_line(batch, line.body)
            result = output_line(line.custom_id, status, body)
            self._kept.setdefault(batch.id, {})[line.idx] = _Kept(line, status == 200, result)
        return await self._record(batch.id, line.idx)

    async def _record(self, batch_id: str, idx: int) -> bool:
        """Write a kept result (and forget it); whether this call recorded it (False: answered
        already, or the batch is no longer in progress)."""
        kept = self._kept[batch_id][idx]
        recorded = await self.store.finish_line(batch_id, kept.line, ok=kept.ok, result=kept.result)
        lines = self._kept.get(batch_id, {})
        lines.pop(idx, None)
        if not lines:
            self._kept.pop(batch_id, None)
        if recorded:
            record.batch_line("completed" if kept.ok else "failed")
        return recorded

    async def _record_kept(self, batch_id: str) -> bool:
        """Write the results a failed write left in memory, in line order; whether any was
        recorded."""
        recorded = False
        for idx in sorted(self._kept.get(batch_id, {})):
            recorded = await self._record(batch_id, idx) or recorded
        return recorded

    async def _back_off(self, batch: BatchRecord, fault: _StoreFault) -> None:
        """The store failed for ``batch``: skip it for a while (twice as long each time in a
        row), or fail it once that has happened ``store_failures`` times and the store takes it."""
        backoff = self._backoffs.setdefault(batch.id, _Backoff())
        backoff.failures += 1
        backoff.operation = fault.operation
        record.batch_store_error(fault.operation)
        if backoff.failures >= self.store_failures and await self._fail(batch, fault, backoff.failures):
            return
        delay = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(backoff.failures - 1, 32))
        backoff.retry_at = time.monotonic() + delay
        logger.warning(
            "batch %s: the job store failed while %s (%d in a row); trying again in %.1f s: %r",
            batch.id,
            _DOING[fault.operation],
            backoff.failures,
            delay,
            fault.__cause__ or fault,
        )

    async def _fail(self, batch: BatchRecord, fault: _StoreFault, failures: int) -> bool:
        """Fail a batch the store keeps failing for, with an error that names nothing of the
        store; whether it is settled (failed, or final meanwhile) rather than to back off again."""
        error = {
            "code": "state_unavailable",
            "line": None,
            "message": f"The job store failed {failures} times in a row while "
            f"{_DOING[fault.operation]}; the batch was stopped. Create it again to retry.",
            "param": None,
        }
        try:
            failed = await self.store.set_status(
                batch.id, "failed", only_from=ACTIVE_BATCH_STATUSES, errors=[error]
            )
        except Exception as exc:
            record.batch_store_error("fail")
            logger.warning("batch %s: failing it failed too: %r", batch.id, exc)
            return False
        await self._forget(batch.id)
        if failed is not None:
            record.batch_finished("failed")
            logger.error(
                "batch %s failed: the job store failed %d times in a row while %s: %r",
                batch.id,
                failures,
                _DOING[fault.operation],
                fault.__cause__ or fault,
            )
        return True

    async def _forget(self, batch_id: str) -> None:
        """Drop what this worker holds for a batch it stops working on: its backoff, and the
        results it kept (their claims given back)."""
        self._backoffs.pop(batch_id, None)
        kept = self._kept.pop(batch_id, None)
        if kept:
            with contextlib.suppress(Exception):
                await self.store.release_lines(batch_id, [k.line for k in kept.values()])

    async def _renew_kept(self, batch_id: str, backoff: _Backoff) -> None:
        """While a batch backs off, renew the claims on its lines whose results wait here (with
        Redis, another replica would otherwise take them over and answer them again)."""
        renewal = self.store.claim_renewal_s
        kept = self._kept.get(batch_id)
        if renewal is None or not kept or time.monotonic() - backoff.renewed < renewal:
            return
        backoff.renewed = time.monotonic()
        try:
            await self.store.keep_claims(batch_id, [k.line for k in kept.values()])
        except Exception as exc:  # they may go stale: another replica would answer them again
            record.batch_store_error("claim")
            logger.warning("batch %s: its claims could not be renewed: %r", batch_id, exc)

    async def _expire(self, batch: BatchRecord) -> BatchRecord:
        """Past the completion window: unanswered lines fail with ``batch_expired``."""
        with _step("expire"):
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
        with _step("finalize"):
            results = await self.store.results(batch.id)
            files: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
            for role, ok in (("output", True), ("error", False)):
                lines = [line for good, line in results if good is ok]
                if not lines:
                    continue
                file_id = derived_file_id(batch.id, role)
                content = "".join(_json_line(line) for line in lines).encode()
                await self.store.add_file(
                    content,
                    filename=f"{batch.id}_{role}.jsonl",
                    purpose="batch_output",
                    file_id=file_id,
                    project=batch.project,
                    expires_at=now() + self.output_retention_s if self.output_retention_s else None,
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
