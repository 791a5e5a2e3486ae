"""Fine-tuning jobs: power self-distillation as a service, on OpenAI's fine-tuning contract.

A job takes a file of chat prompts and runs the pipeline of ``powerserve distill`` on it:

    validating_files -> queued -> running:
        teacher    answers to the training share from the power route (the request path, at batch
                   priority, resumable: each answer is kept as it comes)
        training   a LoRA adapter on those answers, in a process of its own (the server's event loop
                   and engine keep serving)
        serving    the adapter loaded into the running engine as ft:<base>:<suffix>:<job>
        eval       base vs power vs the new model on the held-out share -> the result file
    -> succeeded | failed | cancelled

Each stage reports events (answers generated, loss per step, the evaluation). A gateway that stops
mid-job resumes it at start-up (answers already generated are kept; a finished adapter is not
trained again), and serves the models of succeeded jobs again before it takes requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from service.distill.data import PromptItem
from service.distill.evaluate import evaluate, markdown_table, summarise
from service.distill.teacher import Generator, PowerParams, generate_teacher
from service.distill.train import MLP_MODULES
from service.engines.base import LORA_TARGET_MODULES, scheduling_priority
from service.errors import InvalidRequestError
from service.jobs.files import parse_jsonl
from service.jobs.records import ACTIVE_TUNING_STATUSES, FineTuningJob, derived_file_id, now
from service.jobs.stores import OfflineStore
from service.jobs.worker import BackgroundWorker
from service.metrics import record

__all__ = [
    "BASE_LEARNING_RATE",
    "FineTuningWorker",
    "Hyperparameters",
    "JobFailed",
    "ModelServer",
    "fine_tuned_model_id",
]

logger = logging.getLogger(__name__)

# learning_rate_multiplier scales this (the rate `powerserve distill train` uses).
BASE_LEARNING_RATE = 3e-4


class Hyperparameters(BaseModel):
    """A job's hyperparameters: OpenAI's three ("auto" means the default), then the power teacher's
    settings and the adapter's rank, with the defaults of ``powerserve distill``."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] = Field(
        "auto", description="Passes over the teacher answers (auto: 3)."
    )
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto", description="Answers per step (auto: 8)."
    )
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] = Field(
        "auto", description=f"Multiplies the base learning rate {BASE_LEARNING_RATE} (auto: 1)."
    )
    lora_rank: int = Field(8, ge=1, description="Rank of the LoRA adapter.")
    lora_mlp: bool = Field(False, description="Adapt the MLP projections too, not only attention's.")
    # 4: on 64 prompts, 79% of the power route's self-reward gain kept against 22% with 1
    # (make bench-jobs, docs/benchmarks/self-distillation.md).
    answers_per_prompt: int = Field(
        4, ge=1, le=16, description="Teacher answers to each training prompt, each seeded apart."
    )
    power_alpha: float = Field(4.0, ge=1, le=64, description="The teacher samples p(y|x)**alpha.")
    power_method: Literal["mh", "smc"] = Field("smc", description="The teacher's power sampler.")
    mcmc_steps: int = Field(4, ge=0, le=64, description="MH steps per block (power_method mh).")
    power_particles: int = Field(4, ge=1, le=64, description="Particles (power_method smc).")
    block_size: int = Field(16, ge=1, description="Tokens per block of the power route.")
    answer_tokens: int = Field(64, ge=1, le=2048, description="max_tokens of every answer.")
    eval_share: float = Field(
        0.25, gt=0, lt=1, description="Share of the prompts held out for the evaluation."
    )

    def resolved(self) -> Hyperparameters:
        """ "auto" replaced by the values used."""
        return self.model_copy(
            update={
                "n_epochs": 3 if self.n_epochs == "auto" else self.n_epochs,
                "batch_size": 8 if self.batch_size == "auto" else self.batch_size,
                "learning_rate_multiplier": 1.0
                if self.learning_rate_multiplier == "auto"
                else self.learning_rate_multiplier,
            }
        )

    @property
    def power(self) -> PowerParams:
        return PowerParams(
            alpha=self.power_alpha,
            max_tokens=self.answer_tokens,
            block_size=self.block_size,
            method=self.power_method,
            mcmc_steps=self.mcmc_steps,
            particles=self.power_particles,
        )

    def train_config(self) -> dict[str, Any]:
        """``TrainConfig`` fields for the training process."""
        return {
            "rank": self.lora_rank,
            "lora_alpha": 2 * self.lora_rank,
            "target_modules": list(LORA_TARGET_MODULES + (MLP_MODULES if self.lora_mlp else ())),
            "epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate": BASE_LEARNING_RATE * float(self.learning_rate_multiplier),
        }


def fine_tuned_model_id(base: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base}:{suffix or 'powerserve'}:{job_id.removeprefix('ftjob-')}"


class ModelServer(Protocol):
    """Where a job's model is served (the serving layer's models resource)."""

    async def serve_fine_tuned(self, model_id: str, adapter: Path, owner: str | None) -> None:
        """Load the adapter into the engine and serve it to ``owner``'s project."""
        ...

    def withdraw(self, model_id: str) -> None:
        """Stop serving a model added by ``serve_fine_tuned``."""
        ...


class JobFailed(Exception):
    """A job cannot succeed: its ``error`` (code, message, param)."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


@dataclass
class _Events:
    """A job's events, written in the order they happen by one task (callbacks may not await)."""

    store: OfflineStore
    job_id: str

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())

    def emit(self, message: str, **fields: Any) -> None:
        self._queue.put_nowait({"message": message, **fields})

    async def _write(self) -> None:
        while (event := await self._queue.get()) is not None:
            await self.store.add_event(self.job_id, **event)

    async def close(self) -> None:
        self._queue.put_nowait(None)
        await asyncio.shield(self._writer)


class FineTuningWorker(BackgroundWorker):
    """Runs fine-tuning jobs one at a time, oldest first, in the gateway process. A job's teacher and
    evaluation requests go through ``generator_for(job)`` (charged to the job's owner); its model is
    served by ``models``; training reads the base model from ``model_dir``."""

    def __init__(
        self,
        files: OfflineStore,
        jobs: OfflineStore,
        models: ModelServer,
        *,
        model_dir: Path,
        generator_for: Callable[[FineTuningJob], Generator],
        priority: int,
        concurrency: int,
    ):
        super().__init__("fine-tuning worker", idle_s=1.0)
        self.files = files
        self.jobs = jobs
        self.models = models
        self.model_dir = model_dir
        self.generator_for = generator_for
        self.priority = priority
        self.concurrency = concurrency
        self._running: tuple[str, asyncio.Task[None]] | None = None

    async def restore(self) -> None:
        """Serve the models of the jobs that succeeded (before the first request)."""
        for job in await self.jobs.jobs_with_status(("succeeded",)):
            if not (job.fine_tuned_model and job.adapter_dir and Path(job.adapter_dir).is_dir()):
                logger.error("fine-tuning job %s: its adapter %s is gone", job.id, job.adapter_dir)
                continue
            try:
                await self.models.serve_fine_tuned(
                    job.fine_tuned_model, Path(job.adapter_dir), job.project
                )
            except Exception:  # one broken adapter must not keep the service from starting
                logger.exception("fine-tuning job %s: its model cannot be served", job.id)

    def cancel(self, job_id: str) -> None:
        """Stop a job's work now (its status is the caller's to set)."""
        if self._running is not None and self._running[0] == job_id:
            self._running[1].cancel()

    async def _pass(self) -> bool:
        """The oldest active job, run to its end (or its cancel)."""
        active = await self.jobs.jobs_with_status(ACTIVE_TUNING_STATUSES)
        if not active:
            return False
        job = active[0]
        task = asyncio.create_task(self._run(job), name=f"fine-tuning-{job.id}")
        self._running = (job.id, task)
        try:
            await asyncio.wait({task})  # a cancelled job ends its task, not this loop
        except asyncio.CancelledError:  # the worker is closing: the job resumes next start
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            self._running = None
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # logged by the loop, then retried
        return True

    # --- one job -----------------------------------------------------------------------------

    async def _run(self, job: FineTuningJob) -> None:
        events = _Events(self.jobs, job.id)
        model_id = fine_tuned_model_id(job.model, job.suffix, job.id)
        try:
            await self._stages(job, model_id, events)
        except (JobFailed, InvalidRequestError) as failure:
            error = (
                failure.error
                if isinstance(failure, JobFailed)  # a prompt the model cannot take: the file's fault
                else {"code": "invalid_training_file", "message": failure.message, "param": None}
            )
            await self._finish(job, "failed", events, error=error)
            self.models.withdraw(model_id)
        except asyncio.CancelledError:  # cancelled, or the gateway is stopping (it resumes then)
            self.models.withdraw(model_id)
            raise
        except Exception:
            # The details are the operator's (the log), not the job owner's.
            logger.exception("fine-tuning job %s failed", job.id)
            message = "The job failed on an internal error; the server's log has the details."
            await self._finish(
                job,
                "failed",
                events,
                error={"code": "internal_error", "message": message, "param": None},
            )
            self.models.withdraw(model_id)
        finally:
            await events.close()

    async def _stages(self, job: FineTuningJob, model_id: str, events: _Events) -> None:
        hyper = Hyperparameters.model_validate(job.hyperparameters)
        if self.jobs.tuning_dir is None:
            raise RuntimeError("the fine-tuning job store has no local work directory (tuning_dir)")
        work = self.jobs.tuning_dir / job.id
        work.mkdir(parents=True, exist_ok=True)
        train, held_out = await self._prompts(job, hyper)
        if job.status == "validating_files":
            events.emit(
                f"Validated {job.training_file}: {len(train)} prompts to train on, "
                f"{len(held_out)} held out."
            )
            job = await self._set(job, status="queued")
            events.emit("Job queued.")
        if job.status == "queued":
            job = await self._set(job, status="running")
            record.fine_tuning_job("running")
            events.emit("Job started.")

        teacher = work / "teacher.jsonl"
        answered = [0]

        def answered_one(answer: dict[str, Any]) -> None:
            answered[0] += 1
            events.emit(
                f"Teacher answers: {answered[0]}/{len(train) * hyper.answers_per_prompt}.",
                type="metrics",
                data={"stage": "teacher", "answers": answered[0], "prompts": len(train)},
            )

        events.emit(f"Generating teacher answers from the power route ({_describe(hyper)}).")
        generator = self.generator_for(job)
        with scheduling_priority(self.priority):  # yields to interactive requests, as batches do
            await generate_teacher(
                generator,
                train,
                teacher,
                power=hyper.power,
                concurrency=self.concurrency,
                seed=job.seed,
                answers_per_prompt=hyper.answers_per_prompt,
                on_answer=answered_one,
            )

        adapter = work / "adapter"
        trained = await self._train(teacher, adapter, hyper, events)

        await self.models.serve_fine_tuned(model_id, adapter, job.project)
        events.emit(f"Serving {model_id}; evaluating on {len(held_out)} held-out prompts.")
        with scheduling_priority(self.priority):
            records = await evaluate(
                generator,
                held_out,
                power=hyper.power,
                concurrency=self.concurrency,
                seed=job.seed + 1,
                distilled_model=model_id,
            )
        summary = summarise(records)
        table = markdown_table(summary, {"prompts": len(held_out), "power": _describe(hyper)})
        events.emit("Evaluation:\n" + table, type="metrics", data={"stage": "eval", **summary})
        result = await self.files.add_file(
            json.dumps(
                {"job": job.id, "model": model_id, "summary": summary, "table": table}, indent=2
            ).encode(),
            filename=f"{job.id}_results.json",
            purpose="fine-tune-results",
            file_id=derived_file_id(job.id, "results"),
            project=job.project,
        )
        await self._finish(
            job,
            "succeeded",
            events,
            fine_tuned_model=model_id,
            adapter_dir=str(adapter),
            result_files=[result.id],
            trained_tokens=trained,
        )

    async def _prompts(
        self, job: FineTuningJob, hyper: Hyperparameters
    ) -> tuple[list[PromptItem], list[PromptItem]]:
        """The training file's prompts: (training share, held-out share)."""
        file = await self.files.get_file(job.training_file)
        if file is None or file.purpose != "fine-tune":
            raise JobFailed(
                "invalid_training_file",
                f"File {job.training_file} is missing or not uploaded for fine-tune.",
                "training_file",
            )
        items = []
        for number, value in parse_jsonl(await self.files.read_content(file.id)):
            messages = list(value.get("messages") or [])
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()  # prompts only: the teacher writes the answers
            if not messages:
                raise JobFailed(
                    "invalid_training_file", f"Line {number} holds no prompt.", "training_file"
                )
            answer = value.get("answer")  # a line may carry its reference answer (accuracy)
            items.append(
                PromptItem(
                    id=str(number),
                    split="train",
                    messages=messages,
                    answer=answer if isinstance(answer, str) else None,
                )
            )
        held = max(1, round(len(items) * hyper.eval_share))
        if len(items) - held < 1:
            raise JobFailed(
                "invalid_training_file",
                f"The file holds {len(items)} prompts; at least 2 are needed (training and "
                "held-out shares).",
                "training_file",
            )
        return items[:-held], items[-held:]

    async def _train(self, teacher: Path, adapter: Path, hyper: Hyperparameters, events: _Events) -> int:
        """Train in a process of its own; the tokens trained on. A finished adapter (a restart after
        training) is kept."""
        summary_path = adapter / "training.json"
        if summary_path.exists():
            events.emit("Adapter already trained; kept.")
            return int(json.loads(summary_path.read_text()).get("trained_tokens", 0))
        events.emit(f"Training a rank-{hyper.lora_rank} LoRA adapter on the teacher answers.")
        log = adapter.parent / "training.log"
        arguments = (self.model_dir, teacher, adapter, json.dumps(hyper.train_config()))
        with open(log, "ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-W", "ignore::RuntimeWarning", "-m", "service.distill.train"),
                *map(str, arguments),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
            try:
                trained = await self._follow_training(process, events)
                if await process.wait() != 0:
                    logger.error("fine-tuning: training failed; its log is %s", log)
                    raise JobFailed(
                        "training_failed",
                        f"Training exited with status {process.returncode}; the server's log "
                        "names its own log.",
                    )
            finally:
                if process.returncode is None:  # cancelled: the training stops with the job
                    process.kill()
                    await process.wait()
        return trained

    async def _follow_training(self, process: asyncio.subprocess.Process, events: _Events) -> int:
        assert process.stdout is not None
        trained = 0
        async for line in process.stdout:
            try:
                report = json.loads(line)
            except ValueError:  # something in the training stack printed; not a report
                continue
            if not isinstance(report, dict):
                continue
            if report.get("done"):
                trained = int(report["trained_tokens"])
                continue
            step, steps = report["step"], report["steps"]
            if step == steps or step % max(1, steps // 50) == 0:
                events.emit(
                    f"Step {step}/{steps}: training loss={report['train_loss']:.4f}",
                    type="metrics",
                    data={"stage": "training", **report},
                )
        return trained

    async def _set(self, job: FineTuningJob, **fields: Any) -> FineTuningJob:
        updated = await self.jobs.update(job.id, only_from=ACTIVE_TUNING_STATUSES, **fields)
        if updated is None or updated.final:
            raise asyncio.CancelledError  # cancelled meanwhile
        return updated

    async def _finish(self, job: FineTuningJob, status: str, events: _Events, **fields: Any) -> None:
        done = await self.jobs.update(
            job.id, only_from=ACTIVE_TUNING_STATUSES, status=status, finished_at=now(), **fields
        )
        if done is not None and done.status == status:
            record.fine_tuning_job(status)
            error = fields.get("error")
            events.emit(
                f"Job {status}." + (f" {error['message']}" if error else ""),
                level="error" if error else "info",
            )


def _describe(hyper: Hyperparameters) -> str:
    sampler = (
        f"{hyper.mcmc_steps} MH steps"
        if hyper.power_method == "mh"
        else f"{hyper.power_particles} particles"
    )
    return (
        f"alpha {hyper.power_alpha:g}, {sampler}, blocks of {hyper.block_size}, "
        f"max_tokens {hyper.answer_tokens}"
    )
