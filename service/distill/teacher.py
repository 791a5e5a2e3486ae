"""Stage 1, ``generate``: teacher answers from the power route, as JSONL.

Prompts run through the service's own request path (the same defaults, reports and self-reward as
the API), several at once so that the engine batches their chains: offline (``powerserve distill``)
the request path itself, in a fine-tuning job the serving layer, which charges the job's owner.
Each finished answer is appended and flushed; a rerun skips the prompts already answered, so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from service.distill.data import PromptItem, append_jsonl, read_jsonl
from service.generation import GenerationRequest, GenerationResult
from service.power import PowerMethod
from service.prompts import PromptRenderer

__all__ = [
    "Generator",
    "PowerParams",
    "answer",
    "generate_teacher",
    "pending",
    "prompt_ids",
    "run_bounded",
    "teacher_items",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PowerParams:
    """Power-route settings of the teacher (and of the evaluation's power route)."""

    alpha: float = 4.0
    max_tokens: int = 64
    block_size: int = 16
    # Power-SMC: MH's self-reward at about half its tokens and a third of its latency (make bench);
    # "mh" (exact suffix MH, mcmc_steps per block) stays selectable.
    method: PowerMethod = "smc"
    mcmc_steps: int = 4
    particles: int = 4


class Generator(Protocol):
    """What answers the teacher's and the evaluation's requests: a model id and a request in, the
    result out (``runtime.Services`` offline; a fine-tuning job's gated generator in the server)."""

    @property
    def renderer(self) -> PromptRenderer: ...

    @property
    def base_model(self) -> str: ...

    async def generate(self, model_id: str, request: GenerationRequest) -> GenerationResult: ...


def prompt_ids(renderer: PromptRenderer, item: PromptItem) -> list[int]:
    if item.messages is not None:
        return renderer.encode_chat(item.messages)
    if isinstance(item.prompt, str):
        return renderer.encode_text(item.prompt)
    if item.prompt is None:
        raise ValueError(f"prompt {item.id} has neither messages nor prompt")
    return list(item.prompt)


async def answer(
    generator: Generator,
    model_id: str,
    item: PromptItem,
    *,
    max_tokens: int,
    temperature: float,
    seed: int,
    power: PowerParams | None = None,
) -> dict[str, Any]:
    """One answer on one route, as a JSON record with its cost, self-reward and latency."""
    ids = prompt_ids(generator.renderer, item)
    request = GenerationRequest(
        prompts=(tuple(ids),),
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        power_method=power.method if power else None,
        mcmc_steps=power.mcmc_steps if power and power.method == "mh" else None,
        power_particles=power.particles if power and power.method == "smc" else None,
        block_size=power.block_size if power else None,
    )
    began = time.monotonic()
    result = await generator.generate(model_id, request)
    choice = result.choices[0]
    return item.to_json() | {
        "route": model_id,
        "prompt_ids": ids,
        "completion": choice.text,
        "token_ids": choice.token_ids,
        "finish_reason": choice.finish_reason,
        "self_reward": choice.self_reward.to_json(),
        "tokens_generated": result.tokens_generated,
        "power": None if result.power is None else result.power.to_json(),
        "latency_s": time.monotonic() - began,
    }


async def run_bounded(
    jobs: Sequence[Callable[[], Awaitable[dict[str, Any]]]],
    *,
    concurrency: int,
    on_done: Callable[[dict[str, Any]], None],
    description: str,
) -> None:
    """Run ``jobs`` at most ``concurrency`` at a time, with a progress bar, handing each result on.
    The first that fails cancels the others (a task group): none keeps the engine busy for nobody."""
    gate = asyncio.Semaphore(concurrency)
    with tqdm(total=len(jobs), desc=description, unit="prompt") as progress:

        async def run(job: Callable[[], Awaitable[dict[str, Any]]]) -> None:
            async with gate:
                record = await job()
            on_done(record)
            progress.update()

        try:
            async with asyncio.TaskGroup() as group:
                for job in jobs:
                    group.create_task(run(job))
        except BaseExceptionGroup as failed:
            # Callers see the first failure as it is (a job failed for this reason).
            raise failed.exceptions[0] from None


def teacher_items(items: Sequence[PromptItem], answers_per_prompt: int = 1) -> list[PromptItem]:
    """What the teacher answers: the items, or ``answers_per_prompt`` copies of each (``<id>/<k>``,
    so that each has a seed and a record of its own)."""
    if answers_per_prompt == 1:
        return list(items)
    return [replace(item, id=f"{item.id}/{k}") for item in items for k in range(answers_per_prompt)]


def pending(items: Sequence[PromptItem], out: Path) -> list[PromptItem]:
    """The items ``out`` does not answer yet."""
    done = {record["id"] for record in read_jsonl(out)} if out.exists() else set()
    return [item for item in items if item.id not in done]


async def generate_teacher(
    generator: Generator,
    items: Sequence[PromptItem],
    out: Path,
    *,
    power: PowerParams,
    concurrency: int = 8,
    seed: int = 0,
    answers_per_prompt: int = 1,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Append teacher answers for ``items`` not yet in ``out``; return how many were written.
    ``answers_per_prompt`` > 1: that many answers to each prompt, each with a seed of its own
    (records ``<id>/<k>``). ``on_answer`` sees each answer once it is written."""
    items = teacher_items(items, answers_per_prompt)
    todo = pending(items, out)
    if len(todo) < len(items):
        logger.info("%s: %d answers already there, %d to go", out, len(items) - len(todo), len(todo))
    out.parent.mkdir(parents=True, exist_ok=True)
    model_id = generator.base_model + "-power"
    index = {item.id: i for i, item in enumerate(items)}

    def job(item: PromptItem) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: answer(
            generator,
            model_id,
            item,
            max_tokens=power.max_tokens,
            temperature=1.0 / power.alpha,
            seed=seed * 1_000_003 + index[item.id],  # reproducible, and the same on resume
            power=power,
        )

    def done(record: dict[str, Any]) -> None:
        append_jsonl(out, record)
        if on_answer is not None:
            on_answer(record)

    await run_bounded(
        [job(item) for item in todo],
        concurrency=concurrency,
        on_done=done,
        description="teacher answers",
    )
    return len(todo)
